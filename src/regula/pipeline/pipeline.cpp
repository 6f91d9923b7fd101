#include "regula/pipeline/pipeline.hpp"

#include <cerrno>
#include <cstring>
#include <filesystem>

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include "regula/core/error.hpp"
#include "regula/io/star.hpp"

namespace regula::pipeline {
namespace fs = std::filesystem;

const char* status_name(Status s) {
  switch (s) {
    case Status::Running: return "running";
    case Status::Scheduled: return "scheduled";
    case Status::Succeeded: return "finished";
    case Status::Failed: return "failed";
    case Status::Aborted: return "aborted";
  }
  return "unknown";
}

Process* Record::find_process(const std::string& name) {
  for (auto& p : processes)
    if (p.name == name) return &p;
  return nullptr;
}

void Record::add_node(const std::string& name, int type) {
  for (auto& n : nodes)
    if (n.name == name) return;
  nodes.push_back({name, type});
}

void Record::set_node(const std::string& name, int type) {
  for (auto& n : nodes)
    if (n.name == name) {
      n.type = type;
      return;
    }
  nodes.push_back({name, type});
}

namespace {

std::string record_path(const std::string& dir) { return (fs::path(dir) / "default_pipeline.star").string(); }

int to_int(const star::Table& t, size_t row, int col) { return int(t.number(row, col)); }

Record parse(const star::Document& doc) {
  Record r;
  if (auto* g = doc.find("pipeline_general")) {
    auto v = g->get("rlnPipeLineJobCounter");
    if (!v.empty()) r.job_counter = std::stoi(std::string(v));
  }
  if (auto* b = doc.find("pipeline_processes")) {
    int cn = b->require_column("rlnPipeLineProcessName"), ca = b->column("rlnPipeLineProcessAlias");
    int ct = b->require_column("rlnPipeLineProcessType"), cs = b->require_column("rlnPipeLineProcessStatus");
    for (size_t i = 0; i < b->rows(); ++i)
      r.processes.push_back({std::string(b->value(i, cn)), ca >= 0 ? std::string(b->value(i, ca)) : "None",
                             to_int(*b, i, ct), Status(to_int(*b, i, cs))});
  }
  if (auto* b = doc.find("pipeline_nodes")) {
    int cn = b->require_column("rlnPipeLineNodeName"), ct = b->require_column("rlnPipeLineNodeType");
    for (size_t i = 0; i < b->rows(); ++i) r.nodes.push_back({std::string(b->value(i, cn)), to_int(*b, i, ct)});
  }
  if (auto* b = doc.find("pipeline_input_edges")) {
    int cf = b->require_column("rlnPipeLineEdgeFromNode"), cp = b->require_column("rlnPipeLineEdgeProcess");
    for (size_t i = 0; i < b->rows(); ++i) r.inputs.push_back({std::string(b->value(i, cf)), std::string(b->value(i, cp))});
  }
  if (auto* b = doc.find("pipeline_output_edges")) {
    int cp = b->require_column("rlnPipeLineEdgeProcess"), ct = b->require_column("rlnPipeLineEdgeToNode");
    for (size_t i = 0; i < b->rows(); ++i) r.outputs.push_back({std::string(b->value(i, cp)), std::string(b->value(i, ct))});
  }
  return r;
}

star::Document to_document(const Record& r) {
  star::Document doc;
  auto& g = doc.add_block("pipeline_general", false);
  g.set("rlnPipeLineJobCounter", std::to_string(r.job_counter));
  auto loop = [&](const std::string& name, size_t rows) -> star::Block& {
    auto& b = doc.add_block(name, true);
    for (size_t i = 0; i < rows; ++i) b.add_row();
    return b;
  };
  {
    auto& b = loop("pipeline_processes", r.processes.size());
    std::vector<std::string> n, a;
    std::vector<int> t, s;
    for (auto& p : r.processes) {
      n.push_back(p.name);
      a.push_back(p.alias);
      t.push_back(p.type);
      s.push_back(int(p.status));
    }
    b.set_column("rlnPipeLineProcessName", n);
    b.set_column("rlnPipeLineProcessAlias", a);
    b.set_column("rlnPipeLineProcessType", t);
    b.set_column("rlnPipeLineProcessStatus", s);
  }
  {
    auto& b = loop("pipeline_nodes", r.nodes.size());
    std::vector<std::string> n;
    std::vector<int> t;
    for (auto& x : r.nodes) {
      n.push_back(x.name);
      t.push_back(x.type);
    }
    b.set_column("rlnPipeLineNodeName", n);
    b.set_column("rlnPipeLineNodeType", t);
  }
  {
    auto& b = loop("pipeline_input_edges", r.inputs.size());
    std::vector<std::string> f, p;
    for (auto& e : r.inputs) {
      f.push_back(e.from);
      p.push_back(e.to);
    }
    b.set_column("rlnPipeLineEdgeFromNode", f);
    b.set_column("rlnPipeLineEdgeProcess", p);
  }
  {
    auto& b = loop("pipeline_output_edges", r.outputs.size());
    std::vector<std::string> p, t;
    for (auto& e : r.outputs) {
      p.push_back(e.from);
      t.push_back(e.to);
    }
    b.set_column("rlnPipeLineEdgeProcess", p);
    b.set_column("rlnPipeLineEdgeToNode", t);
  }
  return doc;
}

class Lock {
 public:
  explicit Lock(const std::string& dir) {
    std::string p = (fs::path(dir) / ".regula_pipeline.lock").string();
    fd_ = ::open(p.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0) runtime_error("{}: cannot open the pipeline lock: {}", p, std::strerror(errno));
    while (::flock(fd_, LOCK_EX) != 0) {
      if (errno != EINTR) runtime_error("{}: cannot lock: {}", p, std::strerror(errno));
    }
  }
  ~Lock() {
    ::flock(fd_, LOCK_UN);
    ::close(fd_);
  }

 private:
  int fd_ = -1;
};

}  // namespace

Record read_record(const std::string& project_dir) {
  std::string p = record_path(project_dir);
  // An empty file (`touch default_pipeline.star`, what relion_pipeliner needs to start) is RELION's empty project.
  if (!fs::exists(p) || fs::file_size(p) == 0) return Record{};
  return parse(star::read(p));
}

Record update_record(const std::string& project_dir, const std::function<void(Record&)>& change) {
  Lock lock(project_dir);
  Record r = read_record(project_dir);
  change(r);
  star::write(record_path(project_dir), to_document(r));
  return r;
}

}  // namespace regula::pipeline
