// The pipeline record of a project directory, as RELION 3.1 keeps it in
// `default_pipeline.star`: a job counter, processes (job directories with type and
// status), nodes (files with a type) and edges (node -> process inputs, process ->
// node outputs). Every change is a read-modify-write under an exclusive lock
// (flock on `.regula_pipeline.lock` in the project directory), and the file is
// replaced atomically, so two jobs finishing together never corrupt it.
#pragma once
#include <functional>
#include <string>
#include <vector>

namespace regula::pipeline {

// RELION 3.1 process status codes.
enum class Status : int { Running = 0, Scheduled = 1, Succeeded = 2, Failed = 3, Aborted = 4 };
const char* status_name(Status s);

// RELION 3.1 node types (pipeline_jobs.h). kNodeFinalMap: a post-processed map (sharpened,
// masked or not); kNodePost: the post-processing STAR file (FSC curves, B-factor).
enum NodeType : int {
  kNodeMovies = 0, kNodeMics = 1, kNodeMicCoords = 2, kNodeParticles = 3, kNode2DRefs = 5, kNode3DRef = 6,
  kNodeMask = 7, kNodeModel = 8, kNodeOptimiser = 9, kNodeHalfMap = 10, kNodeFinalMap = 11, kNodeResMap = 12,
  kNodeLogfile = 13, kNodePost = 14, kNodePolishParams = 15
};

struct Process {
  std::string name;   // "Class2D/job003/"
  std::string alias;  // "Class2D/first/" or "None"
  int type = 99;      // RELION process type (Class2D 8, Refine3D 10, ...; 99 for Regula-only jobs)
  Status status = Status::Running;
};
struct Node {
  std::string name;  // path relative to the project directory
  int type = 0;
};
struct Edge {
  std::string from, to;  // input: node -> process; output: process -> node
};

struct Record {
  int job_counter = 1;
  std::vector<Process> processes;
  std::vector<Node> nodes;
  std::vector<Edge> inputs, outputs;

  Process* find_process(const std::string& name);
  // Adds a node unless one of that name exists (an input keeps the type its producer gave it).
  void add_node(const std::string& name, int type);
  // Adds a node or sets its type (an output: the producing job knows its type).
  void set_node(const std::string& name, int type);
};

// Reads `dir/default_pipeline.star` (an empty record when absent).
Record read_record(const std::string& project_dir);
// Locks the record, applies `change`, writes it back atomically, unlocks.
// Returns the record as written.
Record update_record(const std::string& project_dir, const std::function<void(Record&)>& change);

}  // namespace regula::pipeline
