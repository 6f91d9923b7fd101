// The CTF of one particle of a particle table (the join of its row and its optics group).
#pragma once
#include <cstddef>

#include "regula/imaging/ctf.hpp"
#include "regula/model/particles.hpp"

namespace regula {

// CTF parameters of particle i: defocus, angle, phase shift, B-factor and scale
// from its row; voltage, Cs and amplitude contrast from its optics group.
// InputError naming the STAR file and row when the optics group has no voltage.
CtfParams particle_ctf_params(const ParticleTable& table, size_t i);

}  // namespace regula
