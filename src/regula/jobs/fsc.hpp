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

namespace regula {

struct FscJobOptions {
  std::string map1, map2;  // --i1, --i2
  std::string mask;        // --mask (optional, same box)
  std::string out_root;    // --o: ROOT_fsc.star, ROOT_fsc.png ("" = none)
  double angpix = 0;       // --angpix (Å); 0 = from the header of --i1

  std::string validate() const;
};

struct FscJobResult {
  std::vector<double> fsc;  // shells 0..n/2
  int box = 0;
  double angpix = 0;
  double resolution_0143 = 0;  // Å (+inf when FSC(1) < 0.143)
  std::string star, png;       // written files ("" without --o)
};

FscJobResult fsc_compare(const FscJobOptions& opt);

}  // namespace regula
