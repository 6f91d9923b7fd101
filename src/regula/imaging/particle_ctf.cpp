#include "regula/imaging/particle_ctf.hpp"

#include "regula/core/error.hpp"

namespace regula {

CtfParams particle_ctf_params(const ParticleTable& t, size_t i) {
  const OpticsGroup& og = t.optics_of(i);
  if (!(og.voltage > 0))
    input_error("{}: optics group {} has no rlnVoltage (needed for the CTF)", t.where(i), og.number);
  CtfParams p;
  p.voltage_kv = og.voltage;
  p.cs_mm = og.cs;
  p.amplitude_contrast = og.amplitude_contrast;
  p.defocus_u = t.defocus_u[i];
  p.defocus_v = t.defocus_v[i];
  p.defocus_angle = t.defocus_angle[i];
  p.phase_shift = t.phase_shift[i];
  p.bfactor = t.ctf_bfactor[i];
  p.scale = t.ctf_scale[i];
  return p;
}

}  // namespace regula
