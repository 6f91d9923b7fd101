// Bad input to `regula class3d` and `regula initial_model`, run as a user would (REGULA_BINARY):
// every case gives exit status 1, one line "regula: error: ..." naming the file or option and
// what was expected, and leaves the directory as it was (no ROOT_it* files, no start map, no
// temporaries). The data are 8 simulated particles of 24 px; the good runs take 1 iteration.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>

#include "regula/core/grid.hpp"
#include "regula/io/mrc.hpp"
#include "regula/jobs/simulate.hpp"

namespace fs = std::filesystem;

namespace {

const fs::path kData = REGULA_TEST_DATA;

std::string binary() {
  const char* env = std::getenv("REGULA_BINARY");
  return env && *env ? env : REGULA_BINARY;
}

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  for (size_t at = s.find(from); at != std::string::npos; at = s.find(from, at + to.size())) s.replace(at, from.size(), to);
  return s;
}

struct RunResult {
  int status = -1;
  std::string out, err;
};

// A fast search: HEALPix order 0, translations of +-1 px, 1 iteration.
const std::string kFast = " --iter 1 --healpix_order 0 --offset_range 1 --offset_step 1";

class BadInput3D : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() / (std::string("regula_bad3d_") + std::to_string(getpid()) + "_" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    regula::SimulateOptions so;
    so.map = (kData / "proj" / "clean70S_crop48.mrc").string();
    so.out_dir = (dir_ / "sim").string();
    so.n = 8;
    so.angpix = 6;
    so.box = 24;
    so.snr = 0.5;
    so.seed = 3;
    regula::simulate(so);
    star_ = slurp(dir_ / "sim" / "particles.star");
    const std::string stack = (dir_ / "sim" / "particles.mrcs").string();
    ASSERT_NE(star_.find("6 24 2"), std::string::npos) << star_;  // the optics row: pixel size, box, 2D
    ASSERT_NE(star_.find("000003@" + stack), std::string::npos) << star_;
    // Variants of the particles: non-square images, a wrong rlnImageSize, particle 3 of another
    // size, no CTF columns at all, optics with voltage but no defocus columns, no particles.
    regula::mrc::WriteOptions stack_opt;
    stack_opt.pixel_size = 6;
    stack_opt.is_stack = true;
    regula::mrc::write((dir_ / "ns.mrcs").string(), regula::Grid<float>(24, 20, 8, 1.0f), stack_opt);
    write_text("ns.star", replace_all(star_, stack, (dir_ / "ns.mrcs").string()));
    write_text("size.star", replace_all(star_, "6 24 2", "6 32 2"));
    regula::mrc::write((dir_ / "small.mrcs").string(), regula::Grid<float>(20, 20, 8, 1.0f), stack_opt);
    write_text("mixed.star", replace_all(star_, "000003@" + stack, "000003@" + (dir_ / "small.mrcs").string()));
    write_text("nodefocus.star", without_defocus(star_));
    std::string noctf = replace_all(without_defocus(star_), "_rlnAmplitudeContrast #3\n_rlnSphericalAberration #4\n"
                                                            "_rlnVoltage #5\n_rlnImagePixelSize #6\n_rlnImageSize #7\n"
                                                            "_rlnImageDimensionality #8\n",
                                    "_rlnImagePixelSize #3\n_rlnImageSize #4\n_rlnImageDimensionality #5\n");
    write_text("noctf.star", replace_all(noctf, "opticsGroup1 0.1 2.7 300 6 24 2", "opticsGroup1 6 24 2"));
    ASSERT_EQ(slurp(dir_ / "noctf.star").find("rlnVoltage"), std::string::npos);
    write_text("empty.star", "data_particles\n\nloop_\n_rlnImageName #1\n");
    // Maps that cannot be a reference: another box, a 2D image, a stack of 24 images of 24 px.
    regula::mrc::WriteOptions map_opt;
    map_opt.pixel_size = 6;
    regula::mrc::write((dir_ / "box32.mrc").string(), regula::Grid<float>(32, 32, 32, 0.0f), map_opt);
    regula::mrc::write((dir_ / "image.mrc").string(), regula::Grid<float>(24, 24, 1, 0.0f), map_opt);
    regula::mrc::write((dir_ / "stack24.mrcs").string(), regula::Grid<float>(24, 24, 24, 0.0f), stack_opt);
    // The true map with another pixel size in its header (an error, as relion_refine's), and with
    // none (taken at the particles' 6 Å).
    const regula::Grid<float> truth = regula::mrc::read((dir_ / "sim" / "truth_map1.mrc").string());
    map_opt.pixel_size = 5;
    regula::mrc::write((dir_ / "px5.mrc").string(), truth, map_opt);
    map_opt.pixel_size = 0;
    regula::mrc::write((dir_ / "px0.mrc").string(), truth, map_opt);
  }
  void TearDown() override {
    if (!std::getenv("BAD3D_KEEP")) fs::remove_all(dir_);
  }

  // The particles table without its defocus columns (the first three after the optics group).
  static std::string without_defocus(const std::string& star) {
    std::istringstream in(star);
    std::string line, out;
    while (std::getline(in, line)) {
      if (line.rfind("_rlnDefocus", 0) == 0) continue;
      if (line.find("@") != std::string::npos) {  // a particle row: name, micrograph, group, U, V, angle
        std::istringstream w(line);
        std::string name, mic, group;
        w >> name >> mic >> group;
        line = name + " " + mic + " " + group;
      }
      out += line + "\n";
    }
    return out;
  }

  // Runs `regula --quiet ARGS` in the test directory.
  RunResult run(const std::string& args) {
    const std::string cmd =
        "cd '" + dir_.string() + "' && '" + binary() + "' --quiet " + args + " > ../.bad3d_out_" +
        std::to_string(getpid()) + " 2> ../.bad3d_err_" + std::to_string(getpid());
    const int rc = std::system(cmd.c_str());
    RunResult r;
    r.status = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
    const fs::path out = dir_.parent_path() / (".bad3d_out_" + std::to_string(getpid()));
    const fs::path err = dir_.parent_path() / (".bad3d_err_" + std::to_string(getpid()));
    r.out = slurp(out);
    r.err = slurp(err);
    fs::remove(out);
    fs::remove(err);
    return r;
  }
  std::set<std::string> files() const {
    std::set<std::string> s;
    for (const auto& e : fs::recursive_directory_iterator(dir_)) s.insert(e.path().string());
    return s;
  }
  // A command that must fail: status 1 (not a signal), one line on stderr starting with
  // "regula: error: " and containing every string of `expected`, and no file added or removed.
  void expect_failure(const std::string& args, std::initializer_list<std::string> expected) {
    const auto before = files();
    const RunResult r = run(args);
    EXPECT_EQ(r.status, 1) << args << "\n" << r.err;
    for (const auto& e : expected)
      EXPECT_NE(r.err.find(e), std::string::npos) << args << "\nstderr: " << r.err << "expected: " << e;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << args << "\n" << r.err;
    EXPECT_EQ(r.err.rfind("regula: error: ", 0), 0u) << args << "\n" << r.err;
    EXPECT_EQ(r.out, "") << args;
    const auto after = files();
    for (const auto& f : after)
      EXPECT_TRUE(before.count(f)) << "left behind by " << args << ": " << f;
  }
  void expect_success(const std::string& args) {
    const RunResult r = run(args);
    ASSERT_EQ(r.status, 0) << args << "\n" << r.err;
  }
  void write_text(const std::string& name, const std::string& text) { std::ofstream(dir_ / name) << text; }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  fs::path dir_;
  std::string star_;
};

TEST_F(BadInput3D, Class3D) {
  const std::string ok = " --o run --K 1" + kFast;
  const std::string ref = " --ref sim/truth_map1.mrc";
  expect_failure("class3d --i missing.star" + ref + ok, {"missing.star", "not found"});
  expect_failure("class3d --i sim/particles.star --o run --K 1" + kFast, {"--ref"});
  expect_failure("class3d --i sim/particles.star --ref nope.mrc" + ok, {"--ref", "nope.mrc", "not found"});
  expect_failure("class3d --i sim/particles.star --ref box32.mrc" + ok, {"--ref", "box32.mrc", "32x32x32", "24x24x24"});
  expect_failure("class3d --i sim/particles.star --ref image.mrc" + ok, {"--ref", "image.mrc", "not a 3D map"});
  expect_failure("class3d --i sim/particles.star --ref stack24.mrcs" + ok, {"--ref", "stack24.mrcs", "not a 3D map"});
  expect_failure("class3d --i sim/particles.star" + ref + " --o run --K 9" + kFast, {"--K 9", "8 particles"});
  expect_failure("class3d --i sim/particles.star" + ref + " --o run --K 0" + kFast, {"--K", "at least 1"});
  expect_failure("class3d --i sim/particles.star" + ref + " --o run --K -3" + kFast, {"--K", "at least 1"});
  expect_failure("class3d --i sim/particles.star" + ref + " --o run --K two" + kFast, {"--K"});
  expect_failure("class3d --i empty.star" + ref + ok, {"empty.star", "no particles"});
  expect_failure("class3d --i ns.star" + ref + ok, {"ns.star", "square", "24x20"});
  expect_failure("class3d --i size.star" + ref + ok, {"size.star", "rlnImageSize 32", "24 px"});
  expect_failure("class3d --i mixed.star" + ref + ok, {"mixed.star", "particle 3", "20x20", "expected 24x24"});
  expect_failure("class3d --i noctf.star" + ref + ok + " --ctf", {"noctf.star", "--ctf", "rlnVoltage"});
  expect_failure("class3d --i nodefocus.star" + ref + ok + " --ctf", {"nodefocus.star", "--ctf", "rlnDefocusU"});
  expect_failure("class3d --i sim/particles.star" + ref + ok + " --sym X7", {"--sym", "'X7'"});
  expect_failure("class3d --i sim/particles.star" + ref + ok + " --sym C0", {"--sym", "'C0'"});
  expect_failure("class3d --i sim/particles.star --ref px5.mrc" + ok,
                 {"--ref px5.mrc", "pixel size is 5 Å", "particles' is 6 Å", "--rescale_angpix 6 --new_box 24"});
  expect_failure("refine3d --i sim/particles.star --ref px5.mrc --o run" + kFast,
                 {"--ref px5.mrc", "pixel size is 5 Å", "particles' is 6 Å"});
  // The same data are good without the fault: no ctf columns are fine without --ctf; a map
  // without a pixel size is taken at the particles'.
  expect_success("class3d --i noctf.star" + ref + ok);
  EXPECT_TRUE(fs::exists(dir_ / "run_it001_optimiser.star"));
  expect_success("class3d --i sim/particles.star --ref px0.mrc --o px0/run --K 1" + kFast);
}

TEST_F(BadInput3D, InitialModel) {
  const std::string ok = " --o run" + kFast;
  expect_failure("initial_model --i missing.star" + ok, {"missing.star", "not found"});
  expect_failure("initial_model --o run" + kFast, {"--i"});
  expect_failure("initial_model --i sim/particles.star --grad_ini_frac 0.8 --grad_fin_frac 0.5" + ok,
                 {"--grad_ini_frac", "sum of at most 1"});
  expect_failure("initial_model --i sim/particles.star --grad_stepsize 0" + ok, {"--grad_stepsize", "(0, 1]"});
  expect_failure("initial_model --i sim/particles.star --grad_ini_subset 0" + ok, {"--grad_ini_subset"});
  expect_failure("initial_model --i sim/particles.star --K 9" + ok, {"--K 9", "8 particles"});
  expect_failure("initial_model --i sim/particles.star --K 0" + ok, {"--K", "at least 1"});
  expect_failure("initial_model --i empty.star" + ok, {"empty.star", "no particles"});
  expect_failure("initial_model --i ns.star" + ok, {"ns.star", "square", "24x20"});
  expect_failure("initial_model --i size.star" + ok, {"size.star", "rlnImageSize 32", "24 px"});
  expect_failure("initial_model --i mixed.star" + ok, {"mixed.star", "particle 3", "20x20"});
  expect_failure("initial_model --i noctf.star --ctf" + ok, {"noctf.star", "--ctf", "rlnVoltage"});
  expect_failure("initial_model --i nodefocus.star --ctf" + ok, {"nodefocus.star", "--ctf", "rlnDefocusU"});
  expect_failure("initial_model --i sim/particles.star --sym X7" + ok, {"--sym", "'X7'"});
  expect_success("initial_model --i sim/particles.star --ctf" + ok);
  EXPECT_TRUE(fs::exists(dir_ / "run_initial_model.mrc"));
}

// --continue with a file that does not exist, is not a checkpoint, or is another job's checkpoint.
TEST_F(BadInput3D, ContinueNeedsACheckpointOfTheSameJob) {
  expect_success("class3d --i sim/particles.star --ref sim/truth_map1.mrc --o c3/run --K 1 --ctf" + kFast);
  expect_success("initial_model --i sim/particles.star --o im/run --ctf" + kFast);
  expect_success("class2d --i sim/particles.star --o c2/run --K 2 --iter 1 --psi_step 30 --offset_range 1");
  for (const std::string job : {"class3d", "initial_model"}) {
    const std::string more = " --o run --iter 2 --healpix_order 0";
    expect_failure(job + " --continue missing_optimiser.star" + more, {"--continue", "missing_optimiser.star", "not found"});
    expect_failure(job + " --continue sim/particles.star" + more,
                   {"--continue", "sim/particles.star", "data_optimiser_general"});
    expect_failure(job + " --continue sim/truth_map1.mrc" + more, {"--continue", "sim/truth_map1.mrc"});
    expect_failure(job + " --continue c2/run_it001_optimiser.star" + more,
                   {"--continue", "c2/run_it001_optimiser.star", "not a Regula " + job + " checkpoint"});
  }
  expect_failure("class3d --continue im/run_em_it001_optimiser.star --o run --iter 2",
                 {"--continue", "im/run_em_it001_optimiser.star", "checkpoint of regula initial_model, not of class3d"});
  expect_failure("initial_model --continue c3/run_it001_optimiser.star --o run --iter 2",
                 {"--continue", "c3/run_it001_optimiser.star", "checkpoint of regula class3d, not of initial_model"});
  // A checkpoint whose state file is gone.
  fs::copy(dir_ / "c3", dir_ / "c3b");
  write_text("c3b/run_it001_optimiser.star",
             replace_all(slurp(dir_ / "c3/run_it001_optimiser.star"), "c3/run_it001_state.bin", "c3/gone_state.bin"));
  expect_failure("class3d --continue c3b/run_it001_optimiser.star --o run --iter 2", {"--continue", "gone_state.bin"});
  // The checkpoint of each job continues (also with no iteration left to run).
  expect_success("class3d --continue c3/run_it001_optimiser.star --o c3/run --iter 2");
  EXPECT_TRUE(fs::exists(dir_ / "c3/run_it002_optimiser.star"));
  expect_success("initial_model --continue im/run_em_it001_optimiser.star --o im/again --iter 1");
  EXPECT_TRUE(fs::exists(dir_ / "im/again_initial_model.mrc"));
}

}  // namespace
