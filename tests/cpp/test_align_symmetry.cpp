// initial_model --sym: the de novo map (searched in C1, in an arbitrary frame) is turned so that its
// symmetry axes lie on the group's (jobs/initial_model.hpp, align_symmetry), then symmetrised.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "regula/io/mrc.hpp"
#include "regula/jobs/class3d.hpp"
#include "regula/jobs/initial_model.hpp"
#include "regula/imaging/fsc.hpp"
#include "regula/sampling/euler.hpp"
#include "regula/sampling/symmetry.hpp"

using namespace regula;


// The search ends with local steps of 3 degrees in Euler angles, weakest near tilt 0 (rot and psi
// alike): measured 0.6-1.3 degrees off, 2.8 for the axis turned 8 degrees from z.
TEST(AlignSymmetry, PutsTheAxisOfATurnedC4MapOnZ) {
  const SymmetryGroup c4 = SymmetryGroup::parse("C4");
  const Volume v = symmetrise(mrc::read(std::string(REGULA_TEST_DATA) + "/proj/clean70S_crop48.mrc"), c4);
  for (const Euler& q : {Euler{0, 0, 0}, Euler{30, 50, -20}, Euler{-100, 120, 75}, Euler{10, 8, 0}}) {
    const Mat3 Q = euler_to_matrix(q.rot, q.tilt, q.psi);
    const Volume w = rotate_map(v, Q);  // symmetric about Q z
    double corr = 0;
    const Mat3 R = align_symmetry(w, c4, corr, 1);
    // rotate_map(w, R) = v turned by R Q: symmetric about z when R Q z = +-z.
    const Vec3 axis = matvec(matmul(R, Q), Vec3{0, 0, 1});
    const double off = rad2deg(std::acos(std::min(1.0, std::abs(axis[2]))));
    const Volume a = rotate_map(w, R);
    std::printf("turn (%g %g %g): axis %.2f degrees off z, correlation %.3f (search %.3f)\n", q.rot, q.tilt, q.psi, off,
                real_space_correlation(a, symmetrise(a, c4)), corr);
    EXPECT_LT(off, 4.0);
  }
}

// D2 (2-folds on x, y and z): the three axes of a turned D2 map go onto the coordinate axes, in some
// order and sense, so R Q is near one of the 24 rotations that permute the axes (measured 1.3 and 0.9
// degrees).
TEST(AlignSymmetry, PutsTheAxesOfATurnedD2MapOnXYZ) {
  const SymmetryGroup d2 = SymmetryGroup::parse("D2");
  const Volume v = symmetrise(mrc::read(std::string(REGULA_TEST_DATA) + "/proj/clean70S_crop48.mrc"), d2);
  const SymmetryGroup o = SymmetryGroup::parse("O");
  std::vector<Mat3> perms;
  for (const Mat3& P : o.operators())
    if (std::abs(std::abs(P[0][0]) + std::abs(P[0][1]) + std::abs(P[0][2]) - 1) < 1e-9) perms.push_back(P);
  ASSERT_EQ(perms.size(), 24u);  // O holds all 24 rotations permuting the axes
  for (const Euler& q : {Euler{30, 50, -20}, Euler{-100, 120, 75}}) {
    const Mat3 Q = euler_to_matrix(q.rot, q.tilt, q.psi);
    double corr = 0;
    const Mat3 R = align_symmetry(rotate_map(v, Q), d2, corr, 1);
    double off = 180;
    for (const Mat3& P : perms) off = std::min(off, rotation_distance_deg(matmul(R, Q), P));
    std::printf("turn (%g %g %g): %.2f degrees from an axis permutation, correlation %.3f\n", q.rot, q.tilt, q.psi, off,
                corr);
    EXPECT_LT(off, 4.0);
  }
}

// initial_model's --tau2_fudge_scheme (RELION 4/5's): "plain" by default (T throughout); "D-step" starts at T / D
// and rises by the sigmoid of RELION's MlOptimiser::updateTau2Fudge, centred an eighth into the middle phase.
TEST(InitialModelSchedule, Tau2FudgeRisesFromTheInitialPhasesValue) {
  InitialModelOptions o;
  o.input = "particles.star";
  o.out_root = "run";
  o.tau2_fudge = 4;
  EXPECT_EQ(o.validate(), "");
  EXPECT_DOUBLE_EQ(o.initial_tau2_fudge(), 0.0);
  o.tau2_fudge_scheme = "4-step";
  EXPECT_DOUBLE_EQ(o.initial_tau2_fudge(), 1.0);
  o.tau2_fudge_scheme = "2-step";
  EXPECT_DOUBLE_EQ(o.initial_tau2_fudge(), 2.0);
  o.tau2_fudge_scheme = "plain";
  EXPECT_DOUBLE_EQ(o.initial_tau2_fudge(), 0.0);
  for (const char* bad : {"", "step", "-step", "0-step", "x-step", "2-steps", "-1-step", "nan-step", "Plain"}) {
    o.tau2_fudge_scheme = bad;
    EXPECT_NE(o.validate().find("--tau2_fudge_scheme"), std::string::npos) << bad;
  }
  MiniBatchSchedule b;  // 55 mini-batch iterations: initial phase 16, middle 28 (sigmoid length 7), final 11
  b.iterations = 55;
  b.ini_tau2_fudge = 1;
  EXPECT_NEAR(batch_tau2_fudge(b, 0, 4), 1.0, 1e-9);
  EXPECT_NEAR(batch_tau2_fudge(b, 15, 4), 1.0, 1e-2);
  EXPECT_NEAR(batch_tau2_fudge(b, 16, 4), 1 + 3 / (1 + std::pow(10.0, 2.0)), 1e-9);  // (16 - 16 - 3.5) / 1.75 = -2
  EXPECT_NEAR(batch_tau2_fudge(b, 30, 4), 4.0, 1e-4);
  EXPECT_DOUBLE_EQ(batch_tau2_fudge(b, 55, 4), 4.0);  // full-batch EM
  b.ini_tau2_fudge = 0;
  EXPECT_DOUBLE_EQ(batch_tau2_fudge(b, 0, 4), 4.0);
}
