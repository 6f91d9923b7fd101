// CTF refinement after a 3D refinement: `regula ctf_refine`, the counterpart of relion_ctf_refine
// (RELION's CtfRefine job).
//
// Input: particles with refined poses and half sets (a refine3d run_data.star), the two unfiltered
// half maps (--m1/--m2, or the rlnUnfilteredMapHalf1/2 and rlnMaskName of a postprocess STAR file
// given with --f) and optionally a mask (multiplied into both maps). Each particle is compared only
// with the map of its own half set (rlnRandomSubset; gold standard kept).
//
// The image model is imaging/optics_model.hpp's, the likelihood the Gaussian one with a noise
// power per shell and optics group measured first from the residuals of the input model
// (X - s C exp(i phi) Q, s one grey-scale factor per optics group, fitted in the same pass).
// The half maps are filtered by their FSC (the expected map given one noisy half); frequencies up
// to the half maps' FSC = 0.143 (masked when --mask is given) are used, each estimate from its own
// inner limit (--kmin_*). The estimates (docs/ctf_refine.md):
//   --fit_beamtilt: beam tilt per optics group (rlnBeamTiltX/Y, with an image shift that is not
//      kept) or, with --odd_aberr_max_n N >= 3, all odd Zernike coefficients up to order N with the
//      beam tilt taken out of them (rlnOddZernike with coefficients 3 and 4 zero, as RELION 3.1);
//   --fit_aniso: anisotropic magnification per optics group (rlnMagMat00..11), --mag_iter linearised
//      fits; as RELION, each particle's astigmatism is then re-expressed so that its CTF in image
//      pixels is unchanged (--keep_astig: leave the defoci as they are);
//   --fit_aberr: even Zernike coefficients up to --even_aberr_max_n (rlnEvenZernike);
//   --fit_defocus: per-particle defocus (--fit_mode, RELION's five letters for phase shift,
//      defocus, astigmatism, Cs, B-factor: defocus 'p' (per particle) or 'm' (per micrograph),
//      astigmatism 'f' (kept), 'm' (per micrograph, rlnMicrographName) or 'p'; phase shift 'f', 'm'
//      or 'p' (a local search after the defocus scan); B-factor 'f', 'p' or 'm' (below); Cs must be
//      'f'. The default is fpmff, as RELION's GUI with "Fit
//      B-factor? No"; relion_ctf_refine's own default is fpmfm): a scan over --bf_range Å around the
//      input value, then a local search (golden section; Nelder-Mead for astigmatism; for a
//      micrograph's astigmatism, two rounds alternating between the particles' defoci and the
//      astigmatism), with a per-particle grey scale profiled out;
//   --fit_bfacs (or --fit_mode letter 5 'p'/'m' with --fit_defocus): the CTF envelope, B-factor and
//      scale (rlnCtfBfactor, rlnCtfScalefactor), per particle or per micrograph (--bfac_per_mg),
//      maximising the same Gaussian likelihood over B in [--bfac_min_B, --bfac_max_B] and scale >=
//      --bfac_min_scale from --kmin_bfac Å (letter 5: from --kmin_defocus); the scale of the images
//      against the maps' projections, as RELION's. Unlike RELION's --fit_bfacs, which writes B - min_B
//      (30 Å² more than it fitted), the fitted B is written.
// They run in this order, each on the results of the previous ones (the order measured on two-group
// data: beam tilt and magnification bias each other when either is unmodelled, defocus errors bias
// the magnification): odd phase; defocus with the astigmatism kept (only with --fit_aniso);
// magnification passes that also refit the odd phase; even aberrations; defocus; B-factor and scale.
// Output: OUT/particles_ctf_refine.star (the input with the refined values) and, per optics group
// and estimate, PNG images of the per-pixel phases and their fit (OUT/beamtilt_*.png,
// OUT/aberr_*.png). Micrographs are the work units (one thread each; sums added in micrograph
// order), so results do not depend on --j. --only_do_unfinished: as RELION's, skip what is done; the
// fits here are global over the micrographs (no per-micrograph results to keep), so a job whose
// OUT/particles_ctf_refine.star exists is done, and one without it runs from the start. Not yet: MPI,
// Cs fits.
#pragma once
#include <array>
#include <string>
#include <vector>

namespace regula {

struct CtfRefineOptions {
  std::string particles;          // --i: particles with poses (run_data.star)
  std::string postprocess;        // --f: postprocess STAR (half maps and mask from it)
  std::string out_dir;            // --o
  std::string half1, half2;       // --m1, --m2
  std::string mask;               // --mask
  double angpix_ref = -1;         // --angpix_ref (Å; <= 0: map header)
  int pad = 2;                    // --pad
  bool fit_defocus = false;       // --fit_defocus
  std::string fit_mode = "fpmff"; // --fit_mode (RELION's command-line default is fpmfm, its GUI's fpmff)
  double kmin_defocus = 30;       // --kmin_defocus (Å)
  double defocus_range = 2000;    // --bf_range (Å): width of the defocus scan
  bool fit_bfacs = false;         // --fit_bfacs: CTF B-factor and scale per particle
  bool bfac_per_mg = false;       // --bfac_per_mg: per micrograph instead
  double bfac_min_B = -30;        // --bfac_min_B (Å²)
  double bfac_max_B = 300;        // --bfac_max_B (Å²)
  double bfac_min_scale = 0.2;    // --bfac_min_scale
  double kmin_bfac = 30;          // --kmin_bfac (Å)
  bool fit_beamtilt = false;      // --fit_beamtilt
  double kmin_tilt = 20;          // --kmin_tilt (Å)
  int odd_aberr_max_n = 0;        // --odd_aberr_max_n
  bool fit_aberr = false;         // --fit_aberr
  double kmin_aberr = 20;         // --kmin_aberr (Å)
  int even_aberr_max_n = 4;       // --even_aberr_max_n
  bool fit_aniso = false;         // --fit_aniso
  double kmin_mag = 20;           // --kmin_mag (Å)
  bool keep_astig = false;        // --keep_astig
  int mag_iterations = 2;         // --mag_iter
  int threads = 1;                // --j
  bool only_do_unfinished = false;  // --only_do_unfinished: nothing to do when the output exists

  std::string validate() const;
};

struct CtfRefineGroupResult {
  int number = 1;
  std::array<double, 2> beam_tilt{0, 0};  // mrad
  std::vector<double> odd, even;
  std::array<double, 4> mag{1, 0, 0, 1};
  double scale = 1;  // grey scale of the particles relative to the maps' projections
};

struct CtfRefineResult {
  std::string star;                   // OUT/particles_ctf_refine.star
  long particles = 0;
  double max_resolution = 0;          // Å: highest frequency used (half-map FSC 0.143)
  double rms_defocus_change = 0;      // Å (mean of U and V), 0 without --fit_defocus
  std::vector<CtfRefineGroupResult> groups;
};

CtfRefineResult ctf_refine(const CtfRefineOptions& opt);

}  // namespace regula
