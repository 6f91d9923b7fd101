// The two half maps that a correction job compares refined particles with (ctf_refine, polish):
// from --m1/--m2 [--mask] or the rlnUnfilteredMapHalf1/2 and rlnMaskName of a postprocess STAR
// file (--f). The mask (values in [0, 1]) multiplies both maps; each map is then multiplied by the
// half maps' FSC per shell (the expected map given one noisy half: FSC = signal / (signal + noise)
// per shell; without it the noise of unfiltered halves inflates the references' power at high
// frequency), and the highest frequency used is the last shell before the FSC falls below 0.143.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "regula/imaging/projector.hpp"

namespace regula {

struct HalfReferenceOptions {
  std::string command;           // for messages ("ctf_refine", "polish")
  std::string postprocess;       // --f
  std::string half1, half2, mask;  // --m1, --m2, --mask (override --f's)
  double angpix_ref = -1;        // --angpix_ref (<= 0: the map's header)
  int pad = 2;
  int threads = 1;
};

struct HalfReferences {
  std::vector<std::unique_ptr<Projector>> maps;  // half 1, half 2 (FSC-weighted, masked)
  int box = 0;
  double pixel_size = 0;
  std::vector<double> fsc;  // per shell of the maps' box
  int shell_max = 0;        // last shell before the FSC falls below 0.143
  double f_max = 0;         // shell_max / (box pixel_size), 1/Å
  std::string half1, half2, mask;  // the files used
};

HalfReferences load_half_references(const HalfReferenceOptions& opt);

// The reference options of a job whose options have the fields postprocess, half1, half2, mask,
// angpix_ref, pad and threads (CtfRefineOptions, PolishOptions).
template <class JobOptions>
HalfReferenceOptions half_reference_options(const JobOptions& o, std::string command) {
  HalfReferenceOptions r;
  r.command = std::move(command);
  r.postprocess = o.postprocess;
  r.half1 = o.half1;
  r.half2 = o.half2;
  r.mask = o.mask;
  r.angpix_ref = o.angpix_ref;
  r.pad = o.pad;
  r.threads = o.threads;
  return r;
}

}  // namespace regula
