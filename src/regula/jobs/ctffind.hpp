// CTF estimation of micrographs: `regula ctffind`, RELION's CtfFind job with our own estimator
// (micrograph/ctf_fit.hpp) instead of CTFFIND4 or Gctf.
//
// Input (--i): corrected_micrographs.star of a MotionCorr job (or any RELION micrograph STAR
// file), a wildcard, or a list of micrographs. With --use_given_ps the spectra named by
// rlnCtfPowerSpectrum (RELION's <micrograph>_PS.mrc amplitude spectra, sampled at the pixel size in
// their own header) are used and the micrographs need not exist; otherwise each micrograph's
// amplitude spectrum is averaged over --Box tiles overlapping by half.
//
// Outputs in --o DIR/ (RELION's names): per micrograph, at DIR/<name without Type/jobNNN/>,
//   ROOT.ctf  the diagnostic image (MRC: left half the background-subtracted spectrum, right half
//             the fitted CTF^2, as CTFFIND's; rlnCtfImage is "ROOT.ctf:mrc"), ROOT.png the same as a
//             picture, ROOT.txt the result in CTFFIND4's format and ROOT_ctffind4.log pointing to it
//             (so `relion_run_ctffind --only_make_star --is_ctffind4` can read them too);
//   micrographs_ctf.star: data_optics as read plus data_micrographs with every input column and
//   rlnCtfImage, rlnDefocusU/V, rlnCtfAstigmatism, rlnDefocusAngle, rlnCtfFigureOfMerit and
//   rlnCtfMaxResolution (not capped at 25 Å as RELION does with Gctf's).
// --only_do_unfinished (and `regula run --job DIR --continue`) keeps the micrographs whose ROOT.txt
// exists. A micrograph that cannot be read or fitted is skipped with a message. Under mpirun the
// micrographs are split over the ranks; rank 0 joins the results.
// Not done: phase-plate phase shifts (--do_phaseshift is refused), movie Thon rings.
#pragma once
#include <string>

namespace regula {

struct CtffindOptions {
  std::string input;        // --i
  std::string out_dir;      // --o
  int box = 512;            // --Box
  double res_min = 100;     // --ResMin
  double res_max = 7;       // --ResMax
  double df_min = 10000;    // --dFMin
  double df_max = 50000;    // --dFMax
  double df_step = 250;     // --FStep
  double astigmatism = 0;   // --dAst
  bool use_given_ps = false;
  bool use_noDW = false;    // --use_noDW
  bool only_unfinished = false;  // --only_do_unfinished
  double cs = -1, voltage = -1, amplitude_contrast = -1, angpix = -1;  // --CS --HT --AmpCnst --angpix
  int threads = 1;          // --j

  std::string validate() const;
};

struct CtffindResult {
  std::string star;
  int done = 0, skipped = 0, failed = 0;
};

CtffindResult ctffind(const CtffindOptions& opt);

}  // namespace regula
