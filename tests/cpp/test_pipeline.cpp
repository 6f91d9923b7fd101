// Job liveness (the identity in REGULA_JOB_RUNNING), how a job continues, shell quoting for a queue and the
// node types of job outputs.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include <sys/prctl.h>
#include <unistd.h>

#include "regula/pipeline/job.hpp"
#include "regula/pipeline/process.hpp"
#include "regula/pipeline/queue.hpp"

using namespace regula::pipeline;
namespace fs = std::filesystem;

TEST(ProcessIdentity, ThisProcessIsAliveAndRoundTrips) {
  const ProcessIdentity me = current_process();
  EXPECT_EQ(me.pid, long(::getpid()));
  EXPECT_FALSE(me.host.empty());
  EXPECT_GT(me.start_time, 0u);
  EXPECT_EQ(liveness(me), Liveness::Alive);
  auto back = parse_process_identity(to_json(me));
  ASSERT_TRUE(back);
  EXPECT_EQ(back->pid, me.pid);
  EXPECT_EQ(back->host, me.host);
  EXPECT_EQ(back->start_time, me.start_time);
  EXPECT_EQ(back->boot_id, me.boot_id);
}

TEST(ProcessIdentity, CommandNameWithParenthesesAndSpaces) {
  // Field 2 of /proc/PID/stat is "(name)": fields are counted after its last ')'.
  char old[17] = {};
  ASSERT_EQ(::prctl(PR_GET_NAME, old), 0);
  const auto before = current_process().start_time;
  ASSERT_EQ(::prctl(PR_SET_NAME, "a) b ) (c"), 0);
  const auto during = current_process().start_time;
  ::prctl(PR_SET_NAME, old);
  EXPECT_EQ(during, before);
}

TEST(ProcessIdentity, ReusedPidRestartAndOtherHost) {
  const ProcessIdentity me = current_process();
  ProcessIdentity reused = me;
  reused.start_time += 1;  // the pid now names a process that started at another time
  EXPECT_EQ(liveness(reused), Liveness::Gone);
  ProcessIdentity restarted = me;
  restarted.boot_id = "00000000-0000-0000-0000-000000000000";
  EXPECT_EQ(liveness(restarted), Liveness::Gone);
  ProcessIdentity elsewhere = reused;
  elsewhere.host = "elsewhere.invalid";
  EXPECT_EQ(liveness(elsewhere), Liveness::Unknown);
  ProcessIdentity bad = me;
  bad.pid = 0;  // never kill(0, ...): that would be the process group
  EXPECT_EQ(liveness(bad), Liveness::Unknown);
  bad.pid = -1;
  EXPECT_EQ(liveness(bad), Liveness::Unknown);
}

TEST(ProcessIdentity, ParseRejectsOtherText) {
  EXPECT_FALSE(parse_process_identity("12345\n"));  // older markers: the bare pid
  EXPECT_FALSE(parse_process_identity(""));
  EXPECT_FALSE(parse_process_identity("{\"pid\": \"x\", \"host\": \"h\"}"));
  EXPECT_FALSE(parse_process_identity("{\"host\": \"h\"}"));
  EXPECT_TRUE(parse_process_identity("{\"pid\": 5, \"host\": \"h\"}"));
}

TEST(JobState, FromMarkers) {
  const fs::path d = fs::temp_directory_path() / ("regula_test_jobstate_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  auto write = [&](const char* name, const std::string& text) { std::ofstream(d / name) << text; };
  EXPECT_EQ(job_state(d.string()).status, Status::Running);  // nothing recorded: cannot know
  ProcessIdentity gone = current_process();
  gone.start_time += 1;
  write("REGULA_JOB_RUNNING", to_json(gone) + "\n");
  JobState s = job_state(d.string());
  EXPECT_EQ(s.status, Status::Failed);
  EXPECT_NE(s.detail.find(std::to_string(gone.pid)), std::string::npos);
  write("REGULA_JOB_RUNNING", to_json(current_process()) + "\n");
  EXPECT_EQ(job_state(d.string()).status, Status::Running);
  EXPECT_TRUE(job_state(d.string()).detail.empty());
  write("RELION_JOB_EXIT_SUCCESS", "");
  EXPECT_EQ(job_state(d.string()).status, Status::Succeeded);
  fs::remove_all(d);
}

TEST(Continuation, AsEachKindOfJobGoesOn) {
  const fs::path d = fs::temp_directory_path() / ("regula_test_continuation_" + std::to_string(::getpid()));
  fs::remove_all(d);
  auto job = [&](const std::string& name, const std::string& command, const std::string& args) {
    fs::create_directories(d / name);
    std::ofstream(d / name / "command.json") << "{\"command\": \"" << command << "\", \"args\": [" << args << "]}";
    return Job::open((d / name).string());
  };
  using Args = std::vector<std::string>;
  const Job mc = job("mc", "motioncorr", R"("--i", "m.star")");
  EXPECT_EQ(continuation(mc).args, (Args{"--i", "m.star", "--only_do_unfinished"}));
  EXPECT_TRUE(continuation(mc).cannot.empty());
  const Job mc2 = job("mc2", "motioncorr", R"("--only_do_unfinished")");
  EXPECT_EQ(continuation(mc2).args, Args{"--only_do_unfinished"});  // not twice
  EXPECT_EQ(continuation(job("pol", "polish", R"("--i", "p.star")")).args,
            (Args{"--i", "p.star", "--only_do_unfinished"}));
  EXPECT_EQ(continuation(job("ctf", "ctf_refine", R"("--i", "r.star", "--fit_defocus")")).args,
            (Args{"--i", "r.star", "--fit_defocus", "--only_do_unfinished"}));
  EXPECT_EQ(continuation(job("mov", "import", R"("--do_movies", "--i", "M/*.tiff")")).args,
            (Args{"--do_movies", "--i", "M/*.tiff", "--continue"}));
  const Continuation particles = continuation(job("par", "import", R"("--do_particles", "--i", "p.star")"));
  EXPECT_TRUE(particles.args.empty());
  EXPECT_NE(particles.cannot.find("imports its files once"), std::string::npos) << particles.cannot;
  // An iterative job: from its newest optimiser file, in place of one it was itself continued from.
  const Job c2d = job("c2d", "class2d", R"("--i", "p.star", "--continue", "Old/run_it002_optimiser.star", "--K", "3")");
  EXPECT_NE(continuation(c2d).cannot.find("has no *_optimiser.star"), std::string::npos);
  for (const char* f : {"run_it002_optimiser.star", "run_it010_optimiser.star", "run_it010_model.star"})
    std::ofstream(d / "c2d" / f) << "";
  EXPECT_EQ(continuation(c2d).args,
            (Args{"--i", "p.star", "--K", "3", "--continue", c2d.dir() + "run_it010_optimiser.star"}));
  fs::remove_all(d);
}

TEST(ShellQuote, PlainWordsStayAndOthersComeBackWhole) {
  EXPECT_EQ(shell_quote("Class2D/job001/"), "Class2D/job001/");
  EXPECT_EQ(shell_quote("--j"), "--j");
  for (const std::string w : {"a b", "it's", "$HOME", "", "x;y", "*", "a\nb", "'\\"}) {
    FILE* p = ::popen(("printf %s " + shell_quote(w)).c_str(), "r");
    ASSERT_TRUE(p);
    std::string back;
    char buf[256];
    for (size_t n; (n = std::fread(buf, 1, sizeof buf, p)) > 0;) back.append(buf, n);
    ::pclose(p);
    EXPECT_EQ(back, w) << shell_quote(w);
  }
}

TEST(OutputNodeType, PostprocessAsRelion31) {
  EXPECT_EQ(output_node_type("PostProcess/job005/postprocess.mrc", "postprocess"), kNodeFinalMap);
  EXPECT_EQ(output_node_type("PostProcess/job005/postprocess_masked.mrc", "postprocess"), kNodeFinalMap);
  EXPECT_EQ(output_node_type("PostProcess/job005/sharp_masked.mrc", "postprocess"), kNodeFinalMap);
  EXPECT_EQ(output_node_type("PostProcess/job005/postprocess.star", "postprocess"), kNodePost);
  EXPECT_EQ(output_node_type("PostProcess/job005/postprocess_fsc.png", "postprocess"), kNodeLogfile);
  EXPECT_EQ(output_node_type("Polish/job020/shiny.star", "polish"), kNodeParticles);
  EXPECT_EQ(output_node_type("Polish/job020/opt_params_all_groups.txt", "polish"), kNodePolishParams);
  EXPECT_EQ(output_node_type("Polish/job020/opt_params_group_opticsGroup1.txt", "polish"), kNodePolishParams);
  EXPECT_EQ(output_node_type("Polish/job020/bfactors.star", "polish"), -1);
  EXPECT_EQ(kNodePost, 14);
  // Without the job: a masked map is still no mask; masks are.
  EXPECT_EQ(output_node_type("x/postprocess_masked.mrc"), kNodeFinalMap);
  EXPECT_NE(output_node_type("x/map_masked.mrc"), kNodeMask);
  EXPECT_EQ(output_node_type("MaskCreate/job004/mask.mrc", "mask"), kNodeMask);
  EXPECT_EQ(output_node_type("Refine3D/job003/run_half1_class001_unfil.mrc", "refine3d"), kNodeHalfMap);
}
