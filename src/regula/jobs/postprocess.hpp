// Post-processing of two unfiltered half maps (RELION's relion_postprocess): masked FSC corrected
// by phase randomisation (Chen et al. 2013), FSC weighting (Rosenthal & Henderson 2003), MTF
// correction, B-factor sharpening from the Guinier plot, low-pass at the final resolution.
// docs/postprocess.md. Units: resolutions in Å, B-factors in Å^2, pixel size in Å/px.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace regula {

struct PostprocessOptions {
  std::string half1;              // --i: ROOT_half1_class001_unfil.mrc
  std::string half2;              // --i2 (default: --i with "half1" replaced by "half2")
  std::string out_root;           // --o: writes OUT.mrc, OUT_masked.mrc, OUT.star, OUT_fsc.png, OUT_guinier.png
  std::string mask;               // --mask: solvent mask, values in [0, 1] (empty: no masking)
  double angpix = 0;              // --angpix (0: from the header of --i)
  bool auto_bfac = false;         // --auto_bfac
  double autob_lowres = 10;       // --autob_lowres, Å: low-resolution end of the Guinier fit
  double autob_highres = 0;       // --autob_highres, Å (0: Nyquist, as RELION)
  double adhoc_bfac = 0;          // --adhoc_bfac, Å^2 (negative sharpens)
  std::string mtf;                // --mtf: STAR with rlnResolutionInversePixel, rlnMtfValue
  double mtf_angpix = 0;          // --mtf_angpix: detector pixel size (0: --angpix)
  double low_pass = 0;            // --low_pass, Å (0: the final resolution)
  double randomize_at_fsc = 0.8;  // --randomize_at_fsc
  bool skip_fsc_weighting = false;  // --skip_fsc_weighting
  bool force_mask = false;        // --force_mask
  int filter_edge_width = 2;      // --filter_edge_width, shells
  uint64_t seed = 1;              // --random_seed: phase randomisation
  int threads = 1;                // --j
  // --locres: local resolution instead of the global post-processing, as relion_postprocess --locres
  // (jobs/locres.hpp; OUT_locres.mrc, OUT_locres_filtered.mrc, OUT_locres_fscs.star; the mask only
  // for the histogram; --adhoc_bfac sharpens the filtered map; not with --auto_bfac).
  bool locres = false;
  double locres_sampling = 25;     // --locres_sampling, Å
  double locres_maskrad = -1;      // --locres_maskrad, Å (-1: sampling / 2)
  double locres_edgwidth = -1;     // --locres_edgwidth, Å (-1: sampling)
  double locres_randomize_at = 25;  // --locres_randomize_at, Å
  double locres_minres = 50;       // --locres_minres, Å
  int locres_randomisations = 4;   // --locres_randomisations (RELION: 1)
  int locres_fsc_box = 0;          // --locres_fsc_box, px (0: automatic)

  std::string validate() const;
};

struct PostprocessResult {
  double final_resolution = 0;    // rlnFinalResolution, Å (RELION's: the last shell before FSC < 0.143)
  double bfactor = 0;             // rlnBfactorUsedForSharpening
  double slope = 0, intercept = 0, correlation = 0;  // Guinier fit (correlation: r^2, as RELION)
  double randomise_from = 0;      // rlnRandomiseFrom, Å
  std::vector<double> fsc_corrected, fsc_unmasked, fsc_masked, fsc_random_masked;  // per shell
  std::string map, masked_map, star, fsc_png, guinier_png;
  // With --locres: the local-resolution outputs (and nothing above but the file names' root).
  std::string locres_map, locres_filtered, locres_star, locres_histogram;
};

PostprocessResult run_postprocess(const PostprocessOptions& opt);

}  // namespace regula
