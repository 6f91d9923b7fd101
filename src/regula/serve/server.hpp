// `regula serve`: a read-only web page over the job directories of a project (docs/web.md).
//
// JSON API (every `dir` is a job directory relative to the project, e.g. "Refine3D/job002/"):
//   GET /api/jobs                          jobs with type, status, progress (last line of progress.jsonl), times
//   GET /api/job?dir=D                     files of the job and its iterations; modified: the newest change of a
//                                          result file (ns, as a string; logs and progress not counted)
//   GET /api/class2d?dir=D[&iter=N]        classes of iteration N (count, fraction, resolution), counts over iterations
//   GET /api/class_image?dir=D&iter=N&k=K  PNG of class K (1-based)
//   GET /api/map?dir=D&file=F[&size=S][&positive=1]  map F downsampled to at most S^3 voxels (means of
//                                          blocks; positive=1: of the positive voxels only, for local-resolution
//                                          maps that are 0 where undefined): float32 little-endian, headers
//                                          X-Box-Size and X-Pixel-Size
//   GET /api/graph                         the recorded jobs (dir, alias, type, status) and edges from the job that
//                                          wrote a file to each job that read it (default_pipeline.star)
//   GET /api/mics?dir=D[&mic=I]            a MotionCorr or CtfFind job's micrographs with their motion and CTF values
//                                          and diagnostic PNGs; with mic=I micrograph I's trajectory (data_global_shift)
//   GET /api/selection?dir=D               a Select job on ROOT_itNNN_data.star: per class the particles before and
//                                          kept, kept or not, select --auto's scores; the classification job and iteration
//   GET /api/picks?dir=D                   an AutoPick job's micrographs (its <pickname>.star list) or an Extract job's
//                                          (particles.star): name, coordinate file, pick count, size and pixel size
//                                          from the MRC header; the circle diameter (Å) and which option gave it;
//                                          fom: min, max and counts of 40 bins of all picks' figures of merit
//   GET /api/picks?dir=D&mic=I             picks of micrograph I (0-based in that list): x, y (pixels), fom
//   GET /api/micrograph?dir=D&mic=I[&size=S][&lowpass=L]  PNG of micrograph I (of /api/picks or /api/mics) binned to at most S px a side (64..2048,
//                                          default 1024), low-pass L Å (default 20, 0 none), clipped at the 1st and
//                                          99th percentiles (micrograph/preview.hpp); headers X-Micrograph-Width,
//                                          X-Micrograph-Height, X-Bin (micrograph px per image px), X-Pixel-Size
//   GET /api/particles?dir=D[&n=N]         PNG of N (1..100, default 48) of an Extract job's particles at even steps
//                                          through particles.star, side by side; headers X-Particles, X-Columns, X-Box
//   GET /api/fsc?dir=D                     FSC curves (refine3d model.star or postprocess.star) and Guinier plot
//   GET /api/iterations?dir=D              resolution per iteration (ROOT_itNNN_model.star)
//   GET /files/PATH                        a file of the project (MRC, STAR, PNG, ...)
//   GET /, /app.js, /style.css, /three.module.js   the page (assets embedded at build time)
// Paths are canonicalised (symbolic links resolved) and refused unless inside the project; errors are
// JSON {"error": "..."} with 400/403/404/422/500; nothing under the project is ever written.
#pragma once
#include <functional>
#include <memory>
#include <string>

namespace regula::serve {

struct ServeOptions {
  std::string project = ".";      // --dir (relative to --project when both are given)
  int port = 8800;                // --port (0: any free port)
  std::string host = "127.0.0.1"; // --host
};

class Server {
 public:
  explicit Server(ServeOptions opt);
  ~Server();
  // The project directory, canonical. The constructor throws InputError (naming the directory)
  // when it does not exist or is not a directory; nothing is ever created.
  std::string project() const;
  // Binds (InputError when the port is taken); returns the port.
  int bind();
  // Serves until stop() (from another thread or a signal handler thread).
  void listen();
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// An embedded asset ("" when absent): the build step writes the table (web/CMakeLists.txt).
struct Asset {
  const char* path;
  const unsigned char* data;
  unsigned long size;
  const char* mime;
};
const Asset* find_asset(const std::string& path);

}  // namespace regula::serve
