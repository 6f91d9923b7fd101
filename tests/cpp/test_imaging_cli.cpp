// The imaging subcommands run as a user would (REGULA_BINARY): bad input gives
// a one-line error naming the problem, exit status 1 and no output files; good
// input gives numbers checked against analytic results or stored RELION output.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>

#include "regula/io/mrc.hpp"
#include "regula/io/star.hpp"

namespace fs = std::filesystem;
using regula::Grid;

namespace {

const fs::path kData = REGULA_TEST_DATA;

struct RunResult {
  int status = -1;
  std::string out, err;
};

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

class ImagingCli : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           (std::string("regula_imgcli_") + std::to_string(getpid()) + "_" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    fs::copy_file(kData / "proj" / "clean70S_crop48.mrc", dir_ / "map48.mrc");
    fs::copy_file(kData / "proj" / "rln_proj_48.star", dir_ / "poses48.star");
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Runs `regula --quiet ARGS` in the test directory.
  RunResult run(const std::string& args) {
    const std::string cmd = "cd '" + dir_.string() + "' && '" + std::string(REGULA_BINARY) + "' --quiet " + args +
                            " > .stdout 2> .stderr";
    int rc = std::system(cmd.c_str());
    RunResult r;
    r.status = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
    r.out = slurp(dir_ / ".stdout");
    r.err = slurp(dir_ / ".stderr");
    fs::remove(dir_ / ".stdout");
    fs::remove(dir_ / ".stderr");
    return r;
  }
  std::set<std::string> files() const {
    std::set<std::string> s;
    for (const auto& e : fs::directory_iterator(dir_)) s.insert(e.path().filename().string());
    return s;
  }
  // Runs a command that must fail: status 1, one line on stderr containing
  // `expected`, and the directory unchanged (no output, no temporaries).
  void expect_failure(const std::string& args, const std::string& expected) {
    const auto before = files();
    RunResult r = run(args);
    EXPECT_EQ(r.status, 1) << args << "\n" << r.err;
    EXPECT_NE(r.err.find(expected), std::string::npos) << "stderr: " << r.err << "\nexpected: " << expected;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_EQ(r.err.rfind("regula: error: ", 0), 0u) << r.err;
    EXPECT_EQ(files(), before) << "output left behind by: " << args;
  }
  void write_text(const std::string& name, const std::string& text) { std::ofstream(dir_ / name) << text; }

  fs::path dir_;
};

// A 3.1 particle STAR with CTF for `count` images of `stack` (box 48).
std::string ctf_star(double angpix, int count, const std::string& stack) {
  std::string s =
      "data_optics\nloop_\n_rlnOpticsGroup\n_rlnOpticsGroupName\n_rlnImagePixelSize\n_rlnImageSize\n"
      "_rlnImageDimensionality\n_rlnVoltage\n_rlnSphericalAberration\n_rlnAmplitudeContrast\n1 og1 " +
      std::to_string(angpix) +
      " 48 2 300 2.7 0.1\n\ndata_particles\nloop_\n_rlnImageName\n_rlnAngleRot\n_rlnAngleTilt\n_rlnAnglePsi\n"
      "_rlnOriginXAngst\n_rlnOriginYAngst\n_rlnDefocusU\n_rlnDefocusV\n_rlnDefocusAngle\n_rlnOpticsGroup\n";
  for (int i = 1; i <= count; ++i)
    s += std::to_string(i) + "@" + stack + " " + std::to_string(17.0 * i) + " " + std::to_string(11.0 * i) + " " +
         std::to_string(-23.0 * i) + " 1.5 -2 15000 14000 30 1\n";
  return s;
}

double correlation(const float* a, const float* b, size_t n) {
  double ma = 0, mb = 0;
  for (size_t i = 0; i < n; ++i) { ma += a[i]; mb += b[i]; }
  ma /= double(n);
  mb /= double(n);
  double sab = 0, saa = 0, sbb = 0;
  for (size_t i = 0; i < n; ++i) {
    sab += (a[i] - ma) * (b[i] - mb);
    saa += (a[i] - ma) * (a[i] - ma);
    sbb += (b[i] - mb) * (b[i] - mb);
  }
  return sab / std::sqrt(saa * sbb);
}

}  // namespace

// ---- good input -----------------------------------------------------------

TEST_F(ImagingCli, ProjectMatchesStoredRelionProjections) {
  // rln_proj_48.mrcs is relion_project 3.1.3 of the same map and poses (with origin shifts).
  RunResult r = run("project --i map48.mrc --ang poses48.star --o proj");
  ASSERT_EQ(r.status, 0) << r.err;
  Grid<float> ours = regula::mrc::read((dir_ / "proj.mrcs").string());
  Grid<float> relion = regula::mrc::read((kData / "proj" / "rln_proj_48.mrcs").string());
  ASSERT_TRUE(ours.same_shape(relion));
  for (int i = 0; i < relion.nz(); ++i)  // linear interpolation on the same padded lattice: near-identical
    EXPECT_GT(correlation(ours.section(i), relion.section(i), 48 * 48), 0.999) << "image " << i;
  auto doc = regula::star::read((dir_ / "proj.star").string());
  const auto& p = doc.require("particles");
  ASSERT_EQ(p.rows(), 4u);
  EXPECT_EQ(p.value(2, p.require_column("rlnImageName")), "000003@proj.mrcs");
  EXPECT_DOUBLE_EQ(p.number(2, p.require_column("rlnOriginXAngst")), -4.5);
  const auto& o = doc.require("optics");
  EXPECT_EQ(o.integer(0, o.require_column("rlnImageSize")), 48);
  EXPECT_DOUBLE_EQ(o.number(0, o.require_column("rlnImagePixelSize")), 1.0);
}

TEST_F(ImagingCli, ReconstructIsReproducibleAndNearlyThreadIndependent) {
  ASSERT_EQ(run("project --i map48.mrc --nr_uniform 300 --seed 4 --o uni --j 2").status, 0);
  ASSERT_EQ(run("reconstruct --i uni.star --o a.mrc --j 2").status, 0);
  ASSERT_EQ(run("reconstruct --i uni.star --o b.mrc --j 2").status, 0);
  ASSERT_EQ(run("reconstruct --i uni.star --o c.mrc --j 1").status, 0);
  regula::mrc::Header h;
  Grid<float> a = regula::mrc::read((dir_ / "a.mrc").string(), &h);
  Grid<float> b = regula::mrc::read((dir_ / "b.mrc").string());
  Grid<float> c = regula::mrc::read((dir_ / "c.mrc").string());
  Grid<float> map = regula::mrc::read((dir_ / "map48.mrc").string());
  EXPECT_EQ(a.nx(), 48);
  EXPECT_NEAR(h.pixel_size(), 1.0, 1e-6);
  EXPECT_EQ(a.vec(), b.vec());  // same --j: bit-identical (fixed ranges, ordered sum)
  double diff = 0, norm = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, double(std::abs(a[i] - c[i])));
    norm = std::max(norm, double(std::abs(a[i])));
  }
  EXPECT_LT(diff, 1e-4 * norm);  // other --j: float rounding only
  // 300 noise-free views of a 48 px map: the reconstruction resembles the map.
  EXPECT_GT(correlation(a.data(), map.data(), a.size()), 0.95);
}

TEST_F(ImagingCli, PreprocessScaleInvertAndNorm) {
  ASSERT_EQ(run("project --i map48.mrc --ang poses48.star --o proj").status, 0);
  RunResult r = run("preprocess --i proj.star --o inv --invert_contrast");
  ASSERT_EQ(r.status, 0) << r.err;
  Grid<float> a = regula::mrc::read((dir_ / "proj.mrcs").string());
  Grid<float> b = regula::mrc::read((dir_ / "inv.mrcs").string());
  ASSERT_TRUE(a.same_shape(b));
  for (size_t i = 0; i < a.size(); ++i) ASSERT_EQ(b[i], -a[i]);

  r = run("preprocess --i proj.star --o small --scale 24 --norm --bg_radius 10");
  ASSERT_EQ(r.status, 0) << r.err;
  regula::mrc::Header h;
  Grid<float> s = regula::mrc::read((dir_ / "small.mrcs").string(), &h);
  EXPECT_EQ(s.nx(), 24);
  EXPECT_EQ(s.nz(), 4);
  EXPECT_NEAR(h.pixel_size(), 2.0, 1e-6);
  auto doc = regula::star::read((dir_ / "small.star").string());
  const auto& o = doc.require("optics");
  EXPECT_DOUBLE_EQ(o.number(0, o.require_column("rlnImagePixelSize")), 2.0);  // 1 Å * 48 / 24
  EXPECT_EQ(o.integer(0, o.require_column("rlnImageSize")), 24);
  const auto& p = doc.require("particles");
  EXPECT_DOUBLE_EQ(p.number(1, p.require_column("rlnOriginXAngst")), 3.0);  // Å, unchanged
  // Background (r > 10 px about (12, 12)) has mean 0 and standard deviation 1 in every image.
  for (int z = 0; z < s.nz(); ++z) {
    double sum = 0, sum2 = 0;
    int cnt = 0;
    for (int y = 0; y < 24; ++y)
      for (int x = 0; x < 24; ++x)
        if ((x - 12) * (x - 12) + (y - 12) * (y - 12) > 100) {
          double v = s(x, y, z);
          sum += v;
          sum2 += v * v;
          ++cnt;
        }
    EXPECT_NEAR(sum / cnt, 0.0, 1e-4);
    EXPECT_NEAR(std::sqrt(sum2 / cnt - (sum / cnt) * (sum / cnt)), 1.0, 1e-3);
  }
}

TEST_F(ImagingCli, FscOfIdenticalMapsIsOneAndWritesStarAndPng) {
  RunResult r = run("fsc --i1 map48.mrc --i2 map48.mrc --o same");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("resolution at FSC 0.143: 2.000 A"), std::string::npos) << r.out;  // Nyquist of 1 Å px
  auto doc = regula::star::read((dir_ / "same_fsc.star").string());
  const auto& t = doc.require("fsc");
  ASSERT_EQ(t.rows(), 25u);
  for (size_t i = 0; i < t.rows(); ++i) EXPECT_NEAR(t.number(i, t.require_column("rlnFourierShellCorrelation")), 1.0, 1e-6);
  EXPECT_NEAR(t.number(12, t.require_column("rlnAngstromResolution")), 4.0, 1e-9);
  EXPECT_NEAR(t.number(12, t.require_column("rlnResolution")), 0.25, 1e-9);
  const std::string png = slurp(dir_ / "same_fsc.png");
  ASSERT_GT(png.size(), 8u);
  EXPECT_EQ(png.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
}

TEST_F(ImagingCli, MaskIsBinaryWithoutSoftEdge) {
  RunResult r = run("mask --i map48.mrc --o mask.mrc --ini_threshold 0.02");
  ASSERT_EQ(r.status, 0) << r.err;
  Grid<float> map = regula::mrc::read((dir_ / "map48.mrc").string());
  Grid<float> m = regula::mrc::read((dir_ / "mask.mrc").string());
  ASSERT_TRUE(m.same_shape(map));
  for (size_t i = 0; i < m.size(); ++i) ASSERT_EQ(m[i], map[i] >= 0.02f ? 1.0f : 0.0f) << i;
}

// ---- bad input: message, status 1, nothing written -------------------------

TEST_F(ImagingCli, NonCubicMap) {
  regula::mrc::WriteOptions wo;
  wo.pixel_size = 1.0;
  regula::mrc::write((dir_ / "flat.mrc").string(), Grid<float>(48, 48, 40, 1.0f), wo);
  expect_failure("project --i flat.mrc --nr_uniform 3 --o out", "flat.mrc: the map must be cubic, got 48x48x40");
  expect_failure("mask --i flat.mrc --o m.mrc --ini_threshold 0.5", "the map must be cubic");
  expect_failure("fsc --i1 flat.mrc --i2 map48.mrc --o f", "the map must be cubic");
}

TEST_F(ImagingCli, ImagesAtTheStarFilesSampling) {
  // An optics group of 1.5 Å/px and 48 px with a 1 Å/px map: the images are made at the group's
  // sampling (imaging/optics_model.hpp), as RELION predicts them; the stack says 1.5 Å/px.
  write_text("ctf.star", ctf_star(1.5, 3, "none.mrcs"));
  ASSERT_EQ(run("project --i map48.mrc --ang ctf.star --ctf --o out").status, 0);
  regula::mrc::Header h;
  const Grid<float> stack = regula::mrc::read((dir_ / "out.mrcs").string(), &h);
  EXPECT_EQ(stack.nx(), 48);
  EXPECT_EQ(stack.nz(), 3);
  EXPECT_NEAR(h.pixel_size(), 1.5, 1e-6);
}

TEST_F(ImagingCli, OpticsGroupsOfDifferentBoxes) {
  // Two optics groups, 48 px at 1 Å and 40 px at 1.2 Å: one stack per group, named in the STAR
  // file, each image of its group's box and pixel size; reconstruct takes both back together.
  std::string s =
      "data_optics\nloop_\n_rlnOpticsGroup\n_rlnOpticsGroupName\n_rlnImagePixelSize\n_rlnImageSize\n"
      "_rlnVoltage\n_rlnSphericalAberration\n_rlnAmplitudeContrast\n1 og1 1.0 48 300 2.7 0.1\n"
      "2 og2 1.2 40 300 2.7 0.1\n\ndata_particles\nloop_\n_rlnAngleRot\n_rlnAngleTilt\n_rlnAnglePsi\n"
      "_rlnDefocusU\n_rlnOpticsGroup\n";
  for (int i = 0; i < 6; ++i)
    s += std::to_string(31 * i) + " " + std::to_string(17 + 25 * i) + " " + std::to_string(-40 + 13 * i) +
         " 12000 " + std::to_string(1 + i % 2) + "\n";
  write_text("two.star", s);
  ASSERT_EQ(run("project --i map48.mrc --ang two.star --ctf --o out").status, 0);
  regula::mrc::Header h1, h2;
  const Grid<float> s1 = regula::mrc::read((dir_ / "out_opticsgroup1.mrcs").string(), &h1);
  const Grid<float> s2 = regula::mrc::read((dir_ / "out_opticsgroup2.mrcs").string(), &h2);
  EXPECT_EQ(s1.nx(), 48);
  EXPECT_EQ(s1.nz(), 3);
  EXPECT_NEAR(h1.pixel_size(), 1.0, 1e-6);
  EXPECT_EQ(s2.nx(), 40);
  EXPECT_EQ(s2.nz(), 3);
  EXPECT_NEAR(h2.pixel_size(), 1.2, 1e-6);
  const std::string star = slurp(dir_ / "out.star");
  EXPECT_NE(star.find("000002@out_opticsgroup2.mrcs"), std::string::npos) << star;
  EXPECT_EQ(run("reconstruct --i out.star --o rec.mrc --ctf").status, 0);
  regula::mrc::Header hr;
  const Grid<float> rec = regula::mrc::read((dir_ / "rec.mrc").string(), &hr);
  EXPECT_EQ(rec.nx(), 48);  // the first particle's box and the first group's pixel size
  EXPECT_NEAR(hr.pixel_size(), 1.0, 1e-6);
}

TEST_F(ImagingCli, OpticsOptionsBadInput) {
  const std::string sim = "simulate --i map48.mrc --o s --n 4 --angpix 2 ";
  expect_failure(sim + "--mag 1,0,0", "--mag");
  expect_failure(sim + "--mag 1,2,2,4", "--mag: the matrix is singular");
  expect_failure(sim + "--no_ctf --beamtilt_x 1", "need the CTF (not with --no_ctf)");
  expect_failure(sim + "--og2_angpix 1.5", "--og2_angpix/--og2_box need --og2_fraction");
  expect_failure(sim + "--og2_fraction 1.5", "--og2_fraction: must be in [0, 1]");
  ASSERT_EQ(run("project --i map48.mrc --ang poses48.star --o proj").status, 0);
  expect_failure("reconstruct --i proj.star --o rec.mrc --ctf_phase_flipped", "--ctf_phase_flipped needs --ctf");
  expect_failure("reconstruct --i proj.star --o rec.mrc --newbox 1", "--newbox: must be at least 2");
  expect_failure("project --i map48.mrc --nr_uniform 2 --o x --ctf_phase_flip", "--ctf_phase_flip needs --ctf");
  // A STAR file whose optics do not make sense.
  write_text("both.star", "data_optics\nloop_\n_rlnOpticsGroup\n_rlnVoltage\n_rlnImagePixelSize\n"
                          "_rlnCtfDataAreCtfPremultiplied\n_rlnCtfDataArePhaseFlipped\n1 300 1 1 1\n\n"
                          "data_particles\nloop_\n_rlnImageName\n_rlnDefocusU\n_rlnOpticsGroup\n1@proj.mrcs 10000 1\n");
  expect_failure("reconstruct --i both.star --o rec.mrc --ctf", "images cannot be both");
}

TEST_F(ImagingCli, UnknownSymmetry) {
  ASSERT_EQ(run("project --i map48.mrc --ang poses48.star --o proj").status, 0);
  expect_failure("reconstruct --i proj.star --o rec.mrc --sym X7", "unknown symmetry group 'X7'");
}

TEST_F(ImagingCli, ZeroParticles) {
  write_text("empty.star",
             "data_optics\nloop_\n_rlnOpticsGroup\n_rlnImagePixelSize\n_rlnImageSize\n1 1.0 48\n\n"
             "data_particles\nloop_\n_rlnImageName\n_rlnAngleRot\n_rlnAngleTilt\n_rlnAnglePsi\n_rlnOpticsGroup\n");
  expect_failure("reconstruct --i empty.star --o rec.mrc", "empty.star: no particles");
  expect_failure("project --i map48.mrc --ang empty.star --o out", "empty.star: no particles");
  expect_failure("preprocess --i empty.star --o out --invert_contrast", "empty.star: no particles");
}

TEST_F(ImagingCli, MissingStackOrImage) {
  write_text("missing.star", ctf_star(1.0, 3, "nowhere.mrcs"));
  expect_failure("reconstruct --i missing.star --o rec.mrc --ctf", "image stack nowhere.mrcs not found");
  expect_failure("preprocess --i missing.star --o out --invert_contrast", "image stack nowhere.mrcs not found");
  ASSERT_EQ(run("project --i map48.mrc --ang poses48.star --o proj").status, 0);  // 4 images
  write_text("short.star", ctf_star(1.0, 5, "proj.mrcs"));
  expect_failure("reconstruct --i short.star --o rec.mrc --ctf --j 2", "image 5 requested but stack proj.mrcs has 4 images");
  expect_failure("preprocess --i short.star --o out --norm --bg_radius 20", "image 5 requested");
}

TEST_F(ImagingCli, BadOptions) {
  expect_failure("project --i map48.mrc --o out", "give either --ang STAR or --nr_uniform N");
  expect_failure("project --i map48.mrc --nr_uniform 5 --ctf --o out", "--ctf needs --ang");
  expect_failure("preprocess --i poses48.star --o out --norm", "--norm needs --bg_radius");
  expect_failure("fsc --i1 map48.mrc --i2 absent.mrc", "absent.mrc");
}
