// What the 3D jobs share around the E-step (jobs/ml3d.hpp): the particle mask follows the
// particle's current origin (RELION masks after undoing the current offset), so an off-centre
// particle whose origin is known is not cut.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "regula/io/mrc.hpp"
#include "regula/io/star.hpp"
#include "regula/jobs/ml3d.hpp"
#include "regula/model/particles.hpp"

using namespace regula;
namespace fs = std::filesystem;

TEST(Ml3d, ParticleMaskFollowsTheOrigin) {
  const int n = 48;
  const double angpix = 2.0;
  // A disc of radius 6 px centred at the box centre moved by -origin, origin (8, -5) px: the
  // particle as the projection moved by -origin (RELION 3.1's convention).
  const double ox = 8, oy = -5;
  Grid<float> stack(n, n, 1);
  double total = 0;
  for (int y = 0; y < n; ++y)
    for (int x = 0; x < n; ++x) {
      const double r = std::hypot(x - n / 2 + ox, y - n / 2 + oy);
      stack(x, y, 0) = r <= 6 ? 1.0f : 0.0f;
      total += stack(x, y, 0);
    }
  const fs::path dir = fs::temp_directory_path() / ("regula_test_ml3d_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  mrc::WriteOptions wo;
  wo.pixel_size = angpix;
  wo.is_stack = true;
  mrc::write((dir / "p.mrcs").string(), stack, wo);
  star::Document doc;
  star::Block& o = doc.add_block("optics", true);
  o.add_row();
  o.set_column("rlnOpticsGroup", std::vector<int>{1});
  o.set_column("rlnOpticsGroupName", std::vector<std::string>{"opticsGroup1"});
  o.set_column("rlnImagePixelSize", std::vector<double>{angpix});
  o.set_column("rlnImageSize", std::vector<int>{n});
  o.set_column("rlnVoltage", std::vector<double>{300});
  o.set_column("rlnSphericalAberration", std::vector<double>{2.7});
  o.set_column("rlnAmplitudeContrast", std::vector<double>{0.1});
  star::Block& p = doc.add_block("particles", true);
  p.add_row();
  p.set_column("rlnImageName", std::vector<std::string>{"1@" + (dir / "p.mrcs").string()});
  p.set_column("rlnOpticsGroup", std::vector<int>{1});
  star::write((dir / "p.star").string(), doc);
  const ParticleTable table = ParticleTable::read((dir / "p.star").string());
  ParticleImages images(table, 1);
  // Mask radius 10 px, edge 2 px: the disc (radius 6) fits about its own centre, not about the box
  // centre (9.4 px away).
  const ml3d::ParticleMasking m{n, 10.0, 2.0, /*zero_mask=*/true, 1};
  auto sum_after = [&](std::array<double, 2> origin) {
    const Image img = ml3d::read_particle(images, table, 0, m, 1.0, origin, nullptr);
    double s = 0;
    for (float v : img) s += v;
    return s;
  };
  EXPECT_NEAR(sum_after({ox, oy}), total, 1e-3 * total);
  EXPECT_LT(sum_after({0, 0}), 0.8 * total);     // about the box centre: cut
  EXPECT_LT(sum_after({-ox, -oy}), 0.2 * total);  // the wrong sign: mostly cut away
  // Norm correction multiplies; unmasked returns the image as read.
  EXPECT_NEAR(ml3d::read_particle(images, table, 0, m, 2.0, {ox, oy}, nullptr)(n / 2 - 8, n / 2 + 5), 2.0f, 1e-6);
  EXPECT_EQ(ml3d::read_particle(images, table, 0, m, 1.0, {0, 0}, nullptr, true)(0, 0), 0.0f);
  fs::remove_all(dir);
}

// RELION's perturbation sequence (--perturb f): 0 before the first iteration, then moves of
// U(f/2, f) wrapped into [-f, f); the same for the same seed and iteration, and none for f = 0.
TEST(Ml3d, SamplingPerturbationFollowsRelionsRule) {
  const double f = 0.5, step = 7.5, offset = 2;
  EXPECT_EQ(ml3d::sampling_perturbation(1, 0, f, step, offset).fraction, 0.0);
  EXPECT_EQ(ml3d::sampling_perturbation(1, 5, 0.0, step, offset).rotation, identity3());
  double prev = 0;
  for (int k = 1; k <= 40; ++k) {
    const ml3d::Perturbation p = ml3d::sampling_perturbation(7, k, f, step, offset);
    EXPECT_GE(p.fraction, -f);
    EXPECT_LT(p.fraction, f);
    double move = p.fraction - prev;  // U(f/2, f) modulo 2f
    if (move < 0) move += 2 * f;
    EXPECT_GE(move, 0.5 * f - 1e-12) << k;
    EXPECT_LE(move, f + 1e-12) << k;
    EXPECT_DOUBLE_EQ(p.shift_px, p.fraction * offset);
    EXPECT_NEAR(rotation_distance_deg(p.rotation, euler_to_matrix(p.fraction * step, p.fraction * step,
                                                                   p.fraction * step)), 0.0, 1e-4);  // acos near 1: about 1e-6 for equal matrices
    EXPECT_EQ(p.fraction, ml3d::sampling_perturbation(7, k, f, step, offset).fraction);
    prev = p.fraction;
  }
  EXPECT_NE(ml3d::sampling_perturbation(7, 3, f, step, offset).fraction,
            ml3d::sampling_perturbation(8, 3, f, step, offset).fraction);
}
