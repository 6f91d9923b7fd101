// Fourier shell correlation between two maps: `regula fsc`, the counterpart of
// `relion_image_handler --i A --fsc B --angpix P` (and of the curve of
// relion_postprocess without phase randomisation).
//
// Both maps (cubic, same size) are optionally multiplied by --mask; the FSC per
// shell i = round(|k|) Fourier px, 0..n/2, is imaging/fsc.hpp's. Resolution of
// shell i: i / (n * angpix) 1/Å, n * angpix / i Å (shell 0: 999 Å, as RELION).
// Reports the resolution at FSC 0.143 (the last shell before the curve first
// drops below 0.143, as relion_postprocess) and writes, with --o ROOT,
// ROOT_fsc.star (data_fsc: rlnSpectralIndex, rlnResolution, rlnAngstromResolution,
// rlnFourierShellCorrelation) and ROOT_fsc.png (the curve against 1/Å with the
// 0.143 line).
#pragma once
#include <string>
#include <vector>

#include "regula/core/grid.hpp"

namespace regula {

struct FscJobOptions {
  std::string map1, map2;  // --i1, --i2
  std::string mask;        // --mask (optional, same box)
  std::string out_root;    // --o: ROOT_fsc.star, ROOT_fsc.png ("" = none)
  double angpix = 0;       // --angpix (Å); 0 = from the header of --i1
  // --align: first turn (and if better mirror, and shift) --i2 onto --i1 (align_map), e.g. a de novo
  // map, whose frame and hand are arbitrary, onto a known structure; with --o writes ROOT_aligned.mrc.
  bool align = false;
  int threads = 1;         // --j (the search; the result does not depend on it)

  std::string validate() const;
};

struct FscJobResult {
  std::vector<double> fsc;  // shells 0..n/2
  int box = 0;
  double angpix = 0;
  double resolution_0143 = 0;  // Å (+inf when FSC(1) < 0.143)
  std::string star, png;       // written files ("" without --o)
  std::string aligned;         // ROOT_aligned.mrc (--align with --o)
  double rot = 0, tilt = 0, psi = 0;  // --align: the rotation R (RELION's Euler angles)
  bool mirrored = false;              // --i2 mirrored (z -> -z about the centre) before R
  int shift[3] = {0, 0, 0};           // then moved by this many px (x, y, z)
  double correlation = 0;             // real-space correlation after the alignment
};

// The rigid motion that best puts `map` onto `ref` (same cubic box): out(x) = M(R^T (x - c) + c)
// moved by `shift` px, M the map or its mirror image, maximising the real-space correlation. Search:
// copies Fourier-cropped to at most 24 px, HEALPix order 2 directions x 15° in-plane steps, every
// circular shift up to a quarter box (FFT) at each rotation, both hands; local steps of 5° and 2°;
// then at full size local steps of 2° and 1°, each with its best integer shift. Fills rot/tilt/psi,
// mirrored, shift, correlation; returns the moved map.
Volume align_map(const Volume& ref, const Volume& map, FscJobResult& out, int threads);

FscJobResult fsc_compare(const FscJobOptions& opt);

}  // namespace regula
