#include "regula/pipeline/job.hpp"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <map>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include "regula/core/atomic_file.hpp"
#include "regula/core/error.hpp"
#include "regula/io/star.hpp"
#include "regula/pipeline/process.hpp"

namespace regula::pipeline {
namespace fs = std::filesystem;

namespace {

const JobType kTypes[] = {
    {"import", "Import", 0, true, "Import/"},
    {"simulate", "Simulate", 99, true},       {"project", "Project", 99, false},
    {"simulate_movies", "SimulateMovies", 99, true}, {"ctffind", "CtfFind", 2, true},
    {"motioncorr", "MotionCorr", 1, true},       {"autopick", "AutoPick", 4, true},
    {"extract", "Extract", 5, true},
    {"reconstruct", "Reconstruct", 99, false}, {"preprocess", "Preprocess", 5, false},
    {"mask", "MaskCreate", 12, false},         {"fsc", "Fsc", 99, false},
    {"class2d", "Class2D", 8, false},          {"class3d", "Class3D", 9, false},
    {"refine3d", "Refine3D", 10, false},       {"initial_model", "InitialModel", 18, false},
    {"postprocess", "PostProcess", 15, false}, {"select", "Select", 7, false},
    {"symmetry_expand", "SymmetryExpand", 99, false, "expanded.star"},
    {"particle_subtract", "Subtract", 14, true, "Subtract/"},
    {"ctf_refine", "CtfRefine", 21, true, "CtfRefine/"},
    {"polish", "Polish", 20, true, "Polish/"},
    {"locres", "LocalRes", 16, false, "relion"},
};

// [4]: submitted to a queue and not started (what the submit command said).
const char* kMarkers[] = {"REGULA_JOB_RUNNING", "RELION_JOB_EXIT_SUCCESS", "RELION_JOB_EXIT_FAILURE",
                          "RELION_JOB_EXIT_ABORTED", "REGULA_JOB_QUEUED"};

bool takes_value(const std::vector<std::string>& args, size_t i) {
  return i + 1 < args.size() && (args[i + 1].size() < 2 || args[i + 1].rfind("--", 0) != 0);
}

std::vector<JobOption> parse_options(const std::vector<std::string>& args) {
  std::vector<JobOption> out;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a.rfind("--", 0) != 0) continue;
    auto eq = a.find('=');
    if (eq != std::string::npos) {
      out.push_back({a.substr(2, eq - 2), a.substr(eq + 1)});
    } else if (takes_value(args, i)) {
      out.push_back({a.substr(2), args[i + 1]});
      ++i;
    } else {
      out.push_back({a.substr(2), ""});
    }
  }
  return out;
}

void write_job_files(const std::string& dir, const JobType& type, const std::vector<std::string>& args) {
  std::string note = "++++ Executing new job on " + fmt::format("{}", std::time(nullptr)) + "\n++++ with the following command(s):\nregula " +
                     std::string(type.command);
  for (auto& a : args) note += " " + star::quote_if_needed(a);
  note += "\n++++\n";
  write_file_atomic(dir + "note.txt", note);
  nlohmann::json cmd{{"command", type.command}, {"args", args}};
  write_file_atomic(dir + "command.json", cmd.dump(2) + "\n");
  star::Document doc;
  auto& job = doc.add_block("job", false);
  job.set("rlnJobTypeLabel", std::string("regula.") + std::string(type.command));
  job.set("rlnJobIsContinue", "0");
  auto& vals = doc.add_block("joboptions_values", true);
  auto opts = parse_options(args);
  for (size_t i = 0; i < opts.size(); ++i) vals.add_row();
  std::vector<std::string> names, values;
  for (auto& o : opts) {
    names.push_back(o.name);
    values.push_back(o.value.empty() ? "Yes" : o.value);
  }
  vals.set_column("rlnJobOptionVariable", names);
  vals.set_column("rlnJobOptionValue", values);
  star::write(dir + "job.star", doc);
}


// Writes marker `keep` and removes the others. The running marker holds the identity of
// this process (pid, host, start time, boot id), so that a reader can tell a job that
// died without an exit marker; the exit markers hold the process id.
void set_marker(const std::string& dir, const char* keep) {
  for (const char* m : kMarkers) {
    std::string p = dir + m;
    if (m != keep) std::filesystem::remove(p);
    else if (m == kMarkers[0]) write_file_atomic(p, to_json(current_process()) + "\n");
    else if (m == kMarkers[4]) continue;  // written by mark_queued
    else write_file_atomic(p, fmt::format("{}\n", ::getpid()));
  }
}

// The newest ROOT_itNNN_optimiser.star in a job directory ("" if none): where an iterative job resumes.
std::string last_optimiser(const std::string& job_dir) {
  std::string best;
  std::error_code ec;
  for (auto& e : fs::directory_iterator(job_dir, ec)) {
    std::string f = e.path().string();
    if (f.size() > 15 && f.compare(f.size() - 15, 15, "_optimiser.star") == 0 && f > best) best = f;
  }
  return best;
}

// Removes "--name VALUE" and "--name=VALUE" from args.

bool present(const fs::path& p) {
  std::error_code ec;
  return fs::symlink_status(p, ec).type() != fs::file_type::not_found && !ec;
}

}  // namespace

int iteration_of(const std::string& name) {
  for (size_t p = name.find("_it"); p != std::string::npos; p = name.find("_it", p + 1)) {
    if (p + 7 <= name.size() && name[p + 6] == '_' && std::isdigit((unsigned char)name[p + 3]) &&
        std::isdigit((unsigned char)name[p + 4]) && std::isdigit((unsigned char)name[p + 5]))
      return std::stoi(name.substr(p + 3, 3));
  }
  return -1;
}

void erase_option(std::vector<std::string>& args, const std::string& name) {
  for (auto it = args.begin(); it != args.end();) {
    if (*it == name && it + 1 != args.end()) it = args.erase(it, it + 2);
    else if (it->rfind(name + "=", 0) == 0) it = args.erase(it);
    else ++it;
  }
}

const JobType* job_type(std::string_view command) {
  for (const auto& t : kTypes)
    if (t.command == command) return &t;
  return nullptr;
}

JobState job_state(const std::string& job_dir) {
  const fs::path d(job_dir);
  if (present(d / kMarkers[1])) return {Status::Succeeded, ""};
  if (present(d / kMarkers[2])) return {Status::Failed, ""};
  if (present(d / kMarkers[3])) return {Status::Aborted, ""};
  const fs::path running = d / kMarkers[0];
  std::error_code ec;
  if (fs::symlink_status(running, ec).type() != fs::file_type::regular) {
    if (fs::symlink_status(d / kMarkers[4], ec).type() == fs::file_type::regular) {
      std::ifstream q(d / kMarkers[4]);
      std::string said;
      std::getline(q, said);
      return {Status::Running, "queued, not started yet" + (said.empty() ? std::string() : ": " + said)};
    }
    return {Status::Running, ""};
  }
  std::ifstream f(running);
  std::string text(4096, '\0');
  f.read(text.data(), std::streamsize(text.size()));
  text.resize(size_t(f.gcount()));
  auto who = parse_process_identity(text);
  const Liveness live = who ? liveness(*who) : Liveness::Unknown;
  if (live != Liveness::Gone) return {Status::Running, "", live == Liveness::Alive};
  return {Status::Failed, fmt::format("process {} on {} ended without an exit marker (killed, or the machine "
                                      "restarted)", who->pid, who->host)};
}

std::vector<JobListing> list_jobs(const std::string& project_dir) {
  const Record r = read_record(project_dir);
  std::vector<JobListing> jobs;
  for (const auto& p : r.processes) {
    JobListing j{p.name, p.alias == "None" ? "" : p.alias, {p.status, ""}, {}, {}};
    // The record says running until the job writes its end: its directory tells more.
    if (p.status == Status::Running) j.state = job_state((fs::path(project_dir) / p.name).string());
    for (const auto& e : r.inputs)
      if (e.to == p.name) j.inputs.push_back(e.from);
    for (const auto& e : r.outputs)
      if (e.from == p.name) j.outputs.push_back(e.to);
    jobs.push_back(std::move(j));
  }
  return jobs;
}

bool resumes_per_micrograph(std::string_view command) {
  return command == "motioncorr" || command == "ctffind" || command == "autopick" || command == "extract";
}

bool imports_a_list(const std::vector<std::string>& import_args) {
  return std::any_of(import_args.begin(), import_args.end(),
                     [](const std::string& a) { return a == "--do_movies" || a == "--do_micrographs"; });
}

Continuation continuation(const Job& job) {
  std::vector<std::string> args = job.args();
  const std::string_view command = job.type().command;
  auto with_flag = [&](const char* flag) {
    if (std::find(args.begin(), args.end(), flag) == args.end()) args.push_back(flag);
    return Continuation{args, ""};
  };
  // Polishing keeps the micrographs fitted before too (their tracks and sums), then fits the B-factors
  // and writes the shiny particles of all: not a front step of a watched workflow.
  // CTF refinement: done if its output exists, else from the start (global fits: nothing to keep).
  if (resumes_per_micrograph(command) || command == "polish" || command == "ctf_refine")
    return with_flag("--only_do_unfinished");
  if (command == "import") {
    if (imports_a_list(args)) return with_flag("--continue");
    return {{}, fmt::format("{} imports its files once (only an import of movies or micrographs continues, adding "
                            "the new ones)", job.dir())};
  }
  const std::string optimiser = last_optimiser(job.dir());
  if (optimiser.empty()) return {{}, fmt::format("{} has no *_optimiser.star to continue from", job.dir())};
  erase_option(args, "--continue");  // the job may itself have continued another's optimiser file
  args.insert(args.end(), {"--continue", optimiser});
  return {args, ""};
}

std::vector<std::string> input_files(const std::vector<std::string>& args) {
  static const char* kInputs[] = {"i", "i1", "i2", "ref", "mask", "solvent_mask", "ang", "mtf", "data", "revert",
                                  "coord_list", "reextract_data_star"};
  std::vector<std::string> out;
  std::string coord_dir, coord_suffix;
  for (auto& o : parse_options(args)) {
    for (const char* k : kInputs)
      if (o.name == k && !o.value.empty() && fs::is_regular_file(o.value))
        out.push_back(fs::path(o.value).lexically_normal().string());
    if (o.name == "coord_dir") coord_dir = o.value;
    if (o.name == "coord_suffix") coord_suffix = o.value;
  }
  // RELION 3.1's coordinates node: <coord_dir>/coords_suffix<suffix> (written by the picking job).
  if (!coord_dir.empty() && !coord_suffix.empty()) {
    const fs::path f = fs::path(coord_dir) / ("coords_suffix" + coord_suffix);
    if (fs::is_regular_file(f)) out.push_back(f.lexically_normal().string());
  }
  return out;
}

int output_node_type(const std::string& path, std::string_view command) {
  const std::string f = fs::path(path).filename().string();
  auto ends = [&](std::string_view s) { return f.size() >= s.size() && f.compare(f.size() - s.size(), s.size(), s) == 0; };
  if (command == "postprocess" || command == "locres") {
    // relion_postprocess --locres: the local-resolution map (12) and the locally filtered map (11).
    if (ends("_locres.mrc")) return kNodeResMap;
    if (ends("_locres_fscs.star")) return -1;
    if (ends(".mrc")) return kNodeFinalMap;
    if (ends(".star")) return kNodePost;
    if (ends(".png") || ends(".pdf")) return kNodeLogfile;
    return -1;
  }
  if (f.rfind("coords_suffix", 0) == 0 && ends(".star")) return kNodeMicCoords;
  if (command == "import") {
    // What the file holds: a list of movies or micrographs, particles, half maps; the copied
    // per-micrograph coordinate files are not nodes (their coords_suffix file is).
    if (ends(".star")) {
      try {
        const star::Document d = star::read(path);
        if (d.find("movies")) return kNodeMovies;
        if (d.find("micrographs")) return kNodeMics;
        if (d.find("particles")) return kNodeParticles;
      } catch (const std::exception&) {
      }
      return -1;
    }
    if ((f.find("half1") != std::string::npos || f.find("half2") != std::string::npos) && ends(".mrc"))
      return kNodeHalfMap;
    if (ends(".mrcs")) return kNode2DRefs;
  }
  if (command == "polish") {
    // The shiny particles are the node (RELION's); bfactors.star and the per-micrograph tracks are not.
    // In training mode (--params2/--params3) the parameter file is (RELION's polishing parameters).
    if (f == "shiny.star") return kNodeParticles;
    if (f == "opt_params_all_groups.txt" || (f.rfind("opt_params_group_", 0) == 0 && ends(".txt")))
      return kNodePolishParams;
    if (ends(".png") || ends(".pdf")) return kNodeLogfile;
    return -1;
  }
  if (command == "autopick") {
    // The lists of coordinate files (RELION 4's autopick.star, RELION 3.1's coords_suffix_autopick.star)
    // are nodes; the per-micrograph pick files and the reference projections are not.
    if (f == "autopick.star") return kNodeMicCoords;
    if (ends(".png") || ends(".pdf")) return kNodeLogfile;
    return -1;
  }
  if (command == "extract") return f == "particles.star" ? kNodeParticles : -1;
  // select --auto's table of class scores is not particles (RELION's auto-selection writes its
  // scores into a model-like file, not a node either).
  if (command == "select" && ends("_class_scores.star")) return -1;
  if (f == "movies.star") return kNodeMovies;
  if (f == "corrected_micrographs.star" || f == "micrographs_ctf.star") return kNodeMics;
  if (command == "motioncorr" || command == "ctffind" || command == "simulate_movies") {
    // Per-movie files (ROOT.star, ROOT.ctf...) are not nodes; the truth of simulated particles is.
    if (f == "truth_particles.star") return kNodeParticles;
    return -1;
  }
  if (ends("_data.star") || f == "particles.star" || f == "truth.star") return kNodeParticles;
  if (ends("_model.star")) return kNodeModel;
  if (ends("_optimiser.star")) return kNodeOptimiser;
  if (ends("_unfil.mrc")) return kNodeHalfMap;
  if (ends("_classes.mrcs")) return kNode2DRefs;
  // A masked map (postprocess_masked.mrc) is a map, not a mask.
  if (f.find("postprocess") != std::string::npos && ends(".mrc")) return kNodeFinalMap;
  if (f.find("mask") != std::string::npos && !ends("_masked.mrc") && ends(".mrc")) return kNodeMask;
  if (ends(".mrc")) return kNode3DRef;
  if (ends(".star") && f != "job.star" && f != "default_pipeline.star") return kNodeParticles;
  if (ends(".png") || ends(".pdf")) return kNodeLogfile;
  return -1;
}

Job Job::create(const JobType& type, const std::vector<std::string>& args, const std::string& alias) {
  Job job;
  job.type_ = &type;
  job.args_ = args;
  // An import's --i is outside the pipeline (RELION's Import job has no input nodes).
  auto inputs = type.command == "import" ? std::vector<std::string>{} : input_files(args);
  pipeline::update_record(".", [&](Record& r) {
    // Jobs the record still calls running that have ended without saying so (killed, or the
    // machine restarted): their directories know (job_state). RELION's GUI reads the record.
    for (auto& p : r.processes)
      if (p.status == Status::Running) {
        const JobState s = job_state(p.name);
        if (s.status != Status::Running) p.status = s.status;
      }
    // Skip numbers whose directory exists (e.g. made by hand or by RELION).
    for (;; ++r.job_counter) {
      job.dir_ = fmt::format("{}/job{:03d}/", type.dir_name, r.job_counter);
      if (!fs::exists(job.dir_)) break;
    }
    ++r.job_counter;
    fs::create_directories(job.dir_);
    r.processes.push_back({job.dir_, alias.empty() ? "None" : fmt::format("{}/{}/", type.dir_name, alias),
                           type.relion_type, Status::Running});
    for (auto& in : inputs) {
      int t = output_node_type(in);
      r.add_node(in, t < 0 ? kNodeParticles : t);
      r.inputs.push_back({in, job.dir_});
    }
  });
  set_marker(job.dir_, kMarkers[0]);  // first, so that a job dying from here on is seen as failed
  write_job_files(job.dir_, type, args);
  return job;
}

void Job::set_args(std::vector<std::string> args) {
  args_ = std::move(args);
  write_job_files(dir_, *type_, args_);
}

Job Job::open(const std::string& job_dir) {
  std::string dir = job_dir;
  if (dir.empty() || dir.back() != '/') dir += '/';
  std::string path = dir + "command.json";
  if (!fs::exists(path)) input_error("{}: not a Regula job directory (no command.json)", job_dir);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_file(path));
  } catch (const nlohmann::json::exception& e) {
    input_error("{}: malformed: {}", path, e.what());
  }
  Job job;
  job.dir_ = fs::path(dir).lexically_normal().string();
  if (job.dir_.back() != '/') job.dir_ += '/';
  std::string cmd = j.value("command", "");
  job.type_ = job_type(cmd);
  if (!job.type_) input_error("{}: unknown command '{}'", path, cmd);
  job.args_ = j.value("args", std::vector<std::string>{});
  return job;
}

std::vector<std::string> Job::rewritten_args() const {
  std::vector<std::string> out = args_;
  std::string job = dir_.substr(0, dir_.size() - 1);
  bool has_output = false;
  for (size_t i = 0; i < out.size(); ++i) {
    if ((out[i] == "--o" || out[i] == "--odir") && i + 1 < out.size()) {
      has_output = true;
      std::string& v = out[i + 1];
      if (v.rfind(dir_, 0) == 0) break;  // already inside the job directory
      v = type_->output_is_directory ? job : dir_ + fs::path(v).filename().string();
      break;
    }
  }
  if (!has_output && !type_->default_output.empty()) {
    out.push_back("--o");
    out.push_back(type_->output_is_directory ? job : dir_ + std::string(type_->default_output));
  }
  return out;
}

void Job::mark_running() {
  set_marker(dir_, kMarkers[0]);
  pipeline::update_record(".", [&](Record& r) {
    if (auto* p = r.find_process(dir_)) p->status = Status::Running;
  });
}

void Job::mark_queued(const std::string& submitted) {
  std::string line = submitted;
  std::replace(line.begin(), line.end(), '\n', ' ');
  write_file_atomic(dir_ + kMarkers[4], line + "\n");
  set_marker(dir_, kMarkers[4]);
  // A job submitted again after it had ended is running (queued) again in the record too.
  pipeline::update_record(".", [&](Record& r) {
    if (auto* p = r.find_process(dir_)) p->status = Status::Running;
  });
}

void Job::finish(Status status) {
  // Outputs: files in the job directory; of iteration files only the last iteration.
  std::vector<std::string> files;
  std::error_code ec;
  for (auto& e : fs::recursive_directory_iterator(dir_, ec))
    if (e.is_regular_file()) files.push_back(fs::path(e.path()).lexically_normal().string());
  std::sort(files.begin(), files.end());
  int last_it = -1;
  for (auto& f : files) last_it = std::max(last_it, iteration_of(fs::path(f).filename().string()));
  std::vector<std::pair<std::string, int>> outputs;
  for (auto& f : files) {
    std::string name = fs::path(f).filename().string();
    if (name.rfind("RELION_", 0) == 0 || name.rfind("REGULA_", 0) == 0 || name == "note.txt" ||
        name == "job.star" || name == "command.json" || name.rfind("run.", 0) == 0 || name == "progress.jsonl" ||
        name[0] == '.')
      continue;
    int it = iteration_of(name);
    if (it >= 0 && it != last_it) continue;
    int t = output_node_type(f, type_->command);
    if (t >= 0) outputs.emplace_back(f, t);
  }
  pipeline::update_record(".", [&](Record& r) {
    if (auto* p = r.find_process(dir_)) p->status = status;
    // Replace this job's output edges (a re-run may have other outputs).
    r.outputs.erase(std::remove_if(r.outputs.begin(), r.outputs.end(), [&](const Edge& e) { return e.from == dir_; }),
                    r.outputs.end());
    for (auto& [f, t] : outputs) {
      r.set_node(f, t);
      r.outputs.push_back({dir_, f});
    }
  });
  const char* marker = status == Status::Succeeded ? kMarkers[1]
                       : status == Status::Aborted ? kMarkers[3]
                                                   : kMarkers[2];
  set_marker(dir_, marker);
}

}  // namespace regula::pipeline
