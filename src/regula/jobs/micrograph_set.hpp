// The list of movies or micrographs a MotionCorr or CtfFind job works on, and RELION's naming of
// their outputs.
//
// Inputs: a STAR file (RELION 3.1: data_optics + data_movies or data_micrographs; a 3.0 file
// without optics works when the optics come from the command line), a wildcard
// ("Movies/*.tiff", as relion_run_motioncorr --i), or a plain text file listing one file per line
// (blank lines and '#' comments skipped). Optics groups are kept as read (all columns), and the
// rows' other columns too, so that outputs can carry them on.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "regula/io/star.hpp"

namespace regula {

struct MicrographSet {
  std::string source;           // the --i given
  star::Block optics;           // data_optics (a made one with one group for lists)
  star::Block rows;             // data_movies / data_micrographs (rows in input order)
  std::string name_label;       // rlnMicrographMovieName or rlnMicrographName
  std::vector<std::string> names;
  std::vector<int> groups;      // optics group of each row (1-based)

  // A number of optics group g (1-based) from the optics table; `fallback` when the column is
  // absent (< 0: InputError naming the label and `option`, the command-line option that gives it).
  double optics_value(int g, const std::string& label, double fallback, const std::string& option) const;
};

// The files a wildcard matches, sorted by name (glob(3)); none: empty.
std::vector<std::string> glob_files(const std::string& pattern);

// Reads --i. `block` is "movies" or "micrographs", `name_label` the column with the file names.
MicrographSet read_micrograph_set(const std::string& input, const std::string& block, const std::string& name_label);

// RELION's output name of an input file in job directory `out_dir` (ending in '/'): the part after
// a leading "<Type>/jobNNN/" is kept (MotionCorr/job002/Movies/a.mrc -> CtfFind/job003/Movies/a.mrc),
// otherwise the whole relative name (Movies/a.tiff -> MotionCorr/job002/Movies/a.tiff).
std::string pipeline_output_name(const std::string& input, const std::string& out_dir);

// One batch of a per-micrograph (or per-movie) job: work(k, thread) for k in [0, count) on
// `threads` threads (1: in the calling thread, in order). An item whose work throws (anything but
// Cancelled, which stops the batch) is skipped and the rest go on; once all are done each skipped
// item is logged in order as "<job>: skipping <name(k)>: <message>". Shows a progress bar
// "<job>: <what>", checks for cancellation between items and ends with an MPI barrier (every rank
// calls it). ok[k] says whether item k succeeded.
struct BatchOutcome {
  std::vector<char> ok;
  int done = 0, failed = 0;
};
BatchOutcome run_micrograph_batch(size_t count, int threads, const std::string& job, const std::string& what,
                                  const std::function<std::string(size_t)>& name,
                                  const std::function<void(size_t k, int thread)>& work);

// The name without its extension ("a/b.c.mrc" -> "a/b.c").
std::string without_extension(const std::string& path);

}  // namespace regula
