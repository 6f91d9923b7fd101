// The optics model (imaging/optics_model.hpp, imaging/zernike.hpp) and the label policy
// (model/image_labels.hpp): analytic values, RELION's coefficient order and beam-tilt rule,
// the reading and writing of the optics labels, and the refusal of what is not modelled.
// The agreement with RELION's own programs is tests/python/test_optics_relion.py.
#include <algorithm>
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <functional>
#include <iterator>
#include <string>
#include <vector>

#include "regula/core/error.hpp"
#include "regula/core/fft.hpp"
#include "regula/imaging/backprojector.hpp"
#include "regula/imaging/optics_model.hpp"
#include "regula/imaging/projector.hpp"
#include "regula/imaging/zernike.hpp"
#include "regula/io/star.hpp"
#include "regula/model/image_labels.hpp"
#include "regula/model/particles.hpp"

using namespace regula;

namespace {

// A RELION 3.1 particle file: `optics_cols` / `optics_row` add optics labels and values,
// `part_cols` / `part_row` particle ones (one particle row, repeated `n` times).
ParticleTable table(const std::string& optics_cols, const std::string& optics_row, const std::string& part_cols = "",
                    const std::string& part_row = "", int n = 2) {
  std::string s =
      "data_optics\nloop_\n_rlnOpticsGroup\n_rlnOpticsGroupName\n_rlnImagePixelSize\n_rlnImageSize\n"
      "_rlnVoltage\n_rlnSphericalAberration\n_rlnAmplitudeContrast\n" +
      optics_cols + "1 og1 1.5 64 300 2.7 0.1 " + optics_row +
      "\n\ndata_particles\nloop_\n_rlnImageName\n_rlnDefocusU\n_rlnDefocusV\n_rlnDefocusAngle\n_rlnOpticsGroup\n" +
      part_cols;
  for (int i = 1; i <= n; ++i) s += std::to_string(i) + "@x.mrcs 15000 14000 30 1 " + part_row + "\n";
  return ParticleTable::from_document(star::parse(s, "t.star"));
}

std::string message(const std::function<void()>& f) {
  try {
    f();
  } catch (const InputError& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST(Zernike, RelionsCoefficientOrder) {
  // RELION's closed forms (jaz/math/Zernike): odd i -> k = floor((sqrt(1+4i)-1)/2), n = 2k+1,
  // m = 2(i - k^2 - k) - n; even i -> k = floor(sqrt(i)), n = 2k, m = 2(i - k^2 - k).
  for (int i = 0; i < 30; ++i) {
    const int k = int((std::sqrt(1.0 + 4 * i) - 1) / 2);
    const ZernikeIndex o = odd_zernike_index(i);
    EXPECT_EQ(o.n, 2 * k + 1) << i;
    EXPECT_EQ(o.m, 2 * (i - k * k - k) - (2 * k + 1)) << i;
    const int ke = int(std::sqrt(double(i)));
    const ZernikeIndex e = even_zernike_index(i);
    EXPECT_EQ(e.n, 2 * ke) << i;
    EXPECT_EQ(e.m, 2 * (i - ke * ke - ke)) << i;
  }
}

TEST(Zernike, ExplicitPolynomials) {
  for (double x : {-0.21, 0.0, 0.13, 0.3})
    for (double y : {-0.17, 0.05, 0.22}) {
      const double r2 = x * x + y * y;
      EXPECT_NEAR(zernike(1, 1, x, y), x, 1e-14);
      EXPECT_NEAR(zernike(1, -1, x, y), y, 1e-14);
      EXPECT_NEAR(zernike(2, 0, x, y), 2 * r2 - 1, 1e-14);
      EXPECT_NEAR(zernike(2, -2, x, y), 2 * x * y, 1e-14);
      EXPECT_NEAR(zernike(2, 2, x, y), x * x - y * y, 1e-14);
      EXPECT_NEAR(zernike(3, 1, x, y), 3 * r2 * x - 2 * x, 1e-14);
      EXPECT_NEAR(zernike(3, -1, x, y), 3 * r2 * y - 2 * y, 1e-14);
      EXPECT_NEAR(zernike(3, -3, x, y), 3 * x * x * y - y * y * y, 1e-14);
      EXPECT_NEAR(zernike(3, 3, x, y), x * x * x - 3 * x * y * y, 1e-14);
      EXPECT_NEAR(zernike(4, 0, x, y), 6 * r2 * r2 - 6 * r2 + 1, 1e-13);
      // Sums in RELION's order: odd [c0..c5] = Z1-1, Z11, Z3-3, Z3-1, Z31, Z33.
      const std::vector<double> c = {0.5, -1, 2, 3, -4, 5};
      EXPECT_NEAR(odd_zernike_sum(c, x, y),
                  0.5 * y - x + 2 * zernike(3, -3, x, y) + 3 * zernike(3, -1, x, y) - 4 * zernike(3, 1, x, y) +
                      5 * zernike(3, 3, x, y),
                  1e-13);
      const std::vector<double> e = {1, 2, 3, 4};  // Z00, Z2-2, Z20, Z22
      EXPECT_NEAR(even_zernike_sum(e, x, y), 1 + 4 * x * y + 3 * (2 * r2 - 1) + 4 * (x * x - y * y), 1e-13);
    }
}

TEST(OpticsModel, BeamTiltIsThePhysicalPhase) {
  // phi(f) = -2 pi Cs lambda^2 |f|^2 (f . t), Cs in Å, t in radians (RELION's TiltHelper rule).
  ParticleTable t = table("_rlnBeamTiltX\n_rlnBeamTiltY\n", "0.7 -0.4");
  OpticsModel m(t);
  const OpticsGroupModel& g = m.group(0);
  ASSERT_TRUE(g.has_phase());
  const double lam = electron_wavelength(300), cs = 2.7e7, tx = 0.7e-3, ty = -0.4e-3;
  for (double fx : {-0.2, 0.05, 0.31})
    for (double fy : {-0.12, 0.0, 0.27}) {
      const double expect = -2 * kPi * cs * lam * lam * (fx * fx + fy * fy) * (fx * tx + fy * ty);
      EXPECT_NEAR(g.phase_at(fx, fy), expect, 1e-12 + 1e-9 * std::abs(expect));
    }
  EXPECT_EQ(m.features(), unsigned(OpticsModel::kBeamTilt));
  // Beam tilt added to odd coefficients that are already there (RELION 4/5).
  ParticleTable t2 = table("_rlnBeamTiltX\n_rlnBeamTiltY\n_rlnOddZernike\n", "0.7 -0.4 [0,0,0,1.5,-2,0]");
  OpticsModel m2(t2);
  EXPECT_NEAR(m2.group(0).phase_at(0.1, 0.2) - g.phase_at(0.1, 0.2),
              1.5 * zernike(3, -1, 0.1, 0.2) - 2 * zernike(3, 1, 0.1, 0.2), 1e-12);
}

TEST(OpticsModel, MagnificationAndEvenZernikesInTheCtf) {
  ParticleTable t = table("_rlnMagMat00\n_rlnMagMat01\n_rlnMagMat10\n_rlnMagMat11\n_rlnEvenZernike\n",
                          "1.02 0.01 -0.015 0.99 [0,3,0,-2,40]");
  OpticsModel m(t);
  const ParticleOptics po = m.particle(1);
  const OpticsGroupModel& g = m.group(0);
  const double s = 1.0 / (64 * 1.5);
  for (int kx : {0, 3, 17, 32})
    for (int ky : {-32, -9, 0, 21}) {
      const double fx = (1.02 * kx + 0.01 * ky) * s, fy = (-0.015 * kx + 0.99 * ky) * s;
      const double off = 3 * zernike(2, -2, fx, fy) - 2 * zernike(2, 2, fx, fy) + 40 * zernike(4, -4, fx, fy);
      EXPECT_NEAR(po.ctf_value(kx, ky), po.ctf().value(fx, fy, off), 1e-12);
      EXPECT_NEAR(g.gamma_offset_at(fx, fy), off, 1e-12);
    }
  // The pixel-list form equals the pointwise one.
  std::vector<float> kx = {1, 5, 30, 0}, ky = {-7, 2, 11, 32}, go(4), c(4), c2(4), rx(4), ry(4);
  g.evaluate(kx, ky, nullptr, go.data(), rx.data(), ry.data());
  po.evaluate_ctf(kx, ky, go.data(), c.data());
  po.evaluate_ctf(kx, ky, nullptr, c2.data());
  for (size_t q = 0; q < 4; ++q) {
    EXPECT_NEAR(c[q], po.ctf_value(kx[q], ky[q]), 1e-5);
    EXPECT_NEAR(c2[q], po.ctf_value(kx[q], ky[q]), 1e-6);
    EXPECT_NEAR(rx[q], 1.02 * kx[q] + 0.01 * ky[q], 1e-5);  // same sampling: T = M
    EXPECT_NEAR(ry[q], -0.015 * kx[q] + 0.99 * ky[q], 1e-5);
  }
  EXPECT_EQ(m.features(), unsigned(OpticsModel::kAnisoMag | OpticsModel::kEvenZernike));
}

TEST(OpticsModel, SamplingMapsToTheReference) {
  ParticleTable t = table("", "");
  OpticsModel m(t);
  EXPECT_FALSE(m.group(0).maps_to_reference());  // the reference defaults to the first group's sampling
  m.set_reference(80, 2.0);                      // 160 Å box: image px k (96 Å box) is k * 160/96 map px
  EXPECT_NEAR(m.group(0).to_reference[0][0], 160.0 / 96.0, 1e-12);
  EXPECT_NEAR(m.group(0).to_reference[0][1], 0.0, 1e-12);
  // A phase-flipped group has C >= 0, a premultiplied one C^2 in the prediction and X in the data.
  ParticleTable tf = table("_rlnCtfDataArePhaseFlipped\n", "1");
  OpticsModel mf(tf);
  for (int k = 0; k < 32; ++k) EXPECT_GE(mf.particle(0).ctf_value(k, 0), 0.0);
  ParticleTable tp = table("_rlnCtfDataAreCtfPremultiplied\n", "1");
  OpticsModel mp(tp);
  EXPECT_FLOAT_EQ(mp.particle(0).predicted(-0.5f), 0.25f);
  EXPECT_FLOAT_EQ(mp.particle(0).backprojected(-0.5f), 1.0f);
  EXPECT_FLOAT_EQ(m.particle(0).predicted(-0.5f), -0.5f);
  EXPECT_FLOAT_EQ(m.particle(0).backprojected(-0.5f), -0.5f);
  EXPECT_EQ(mp.features(), unsigned(OpticsModel::kPremultiplied));
}

TEST(OpticsModel, RequireOnlyNamesLabelFileAndCommand) {
  ParticleTable t = table("_rlnBeamTiltX\n_rlnBeamTiltY\n", "0.3 0");
  const std::string msg = message([&] { OpticsModel(t).require_only(0, "refine3d"); });
  EXPECT_NE(msg.find("t.star"), std::string::npos) << msg;
  EXPECT_NE(msg.find("_rlnBeamTiltX"), std::string::npos) << msg;
  EXPECT_NE(msg.find("not yet supported by refine3d"), std::string::npos) << msg;
  EXPECT_NO_THROW(OpticsModel(t).require_only(OpticsModel::kBeamTilt, "refine3d"));
  // All-zero aberration columns change nothing: accepted.
  ParticleTable z = table("_rlnBeamTiltX\n_rlnBeamTiltY\n_rlnOddZernike\n_rlnMagMat00\n", "0 0 [0,0,0,0,0,0] 1");
  EXPECT_EQ(OpticsModel(z).features(), 0u);
  EXPECT_NO_THROW(OpticsModel(z).require_only(0, "class2d"));
}

TEST(ImageLabels, UnknownImageLabelsRefusedOthersAccepted) {
  for (const char* bad : {"rlnCtfSomething", "rlnBeamTiltSomething", "rlnMagSomething", "rlnImageSomething",
                          "rlnDefocusSomething", "rlnTrefoilZernike"}) {
    const std::string msg = message([&] { OpticsModel(table("", "", std::string("_") + bad + "\n", "1")); });
    EXPECT_NE(msg.find(std::string("_") + bad), std::string::npos) << msg;
    EXPECT_NE(msg.find("t.star"), std::string::npos) << msg;
    const std::string msg2 = message([&] { OpticsModel(table(std::string("_") + bad + "\n", "1")); });
    EXPECT_NE(msg2.find("data_optics has _" + std::string(bad)), std::string::npos) << msg2;
  }
  // Bookkeeping, known or not, is accepted.
  EXPECT_NO_THROW(OpticsModel(table("", "",
                                    "_rlnCoordinateX\n_rlnMicrographName\n_rlnAutopickFigureOfMerit\n_rlnClassNumber\n"
                                    "_rlnGroupName\n_rlnCtfFigureOfMerit\n_rlnCtfMaxResolution\n_rlnNormCorrection\n"
                                    "_rlnSomethingElse\n_cryosparcThing\n",
                                    "1 m.mrc 0.5 1 g1 0.1 4.5 1 7 x")));
  // Known labels that are refused, and modelled ones with values not modelled.
  EXPECT_NE(message([&] { OpticsModel(table("", "", "_rlnCtfImage\n", "c.mrc")); }).find("_rlnCtfImage"),
            std::string::npos);
  EXPECT_NE(message([&] { OpticsModel(table("_rlnImageDimensionality\n", "3")); }).find("only 2D"), std::string::npos);
  EXPECT_NE(message([&] { OpticsModel(table("", "", "_rlnOriginZAngst\n", "2.5")); }).find("_rlnOriginZAngst"),
            std::string::npos);
  EXPECT_NO_THROW(OpticsModel(table("", "", "_rlnOriginZAngst\n", "0")));
  // Optics labels in data_particles: a copy of the group's value is fine, another value is refused.
  EXPECT_NO_THROW(OpticsModel(table("", "", "_rlnVoltage\n_rlnMagnification\n_rlnDetectorPixelSize\n", "300 10000 1.5")));
  const std::string msg = message([&] { OpticsModel(table("", "", "_rlnVoltage\n", "200")); });
  EXPECT_NE(msg.find("_rlnVoltage"), std::string::npos) << msg;
  EXPECT_NE(msg.find("200 here, 300 in data_optics"), std::string::npos) << msg;
  EXPECT_NE(message([&] { OpticsModel(table("", "", "_rlnBeamTiltX\n", "0.2")); }).find("_rlnBeamTiltX"),
            std::string::npos);
  // Nonsense values.
  EXPECT_NE(message([&] { OpticsModel(table("_rlnMagMat00\n_rlnMagMat01\n_rlnMagMat10\n_rlnMagMat11\n", "1 2 2 4")); })
                .find("singular"),
            std::string::npos);
  EXPECT_NE(message([&] { table("_rlnOddZernike\n", "[0,x,1]"); }).find("_rlnOddZernike"), std::string::npos);
  // Every label of the list is found, and the list has no duplicates.
  for (const ImageLabel& l : image_labels()) {
    EXPECT_EQ(find_image_label(l.name), &l) << l.name;
    EXPECT_EQ(find_image_label("_" + std::string(l.name)), &l) << l.name;
  }
}

TEST(ParticleTable, OpticsLabelsReadAndWrittenBack) {
  ParticleTable t = table(
      "_rlnBeamTiltX\n_rlnBeamTiltY\n_rlnOddZernike\n_rlnEvenZernike\n_rlnMagMat00\n_rlnMagMat01\n_rlnMagMat10\n"
      "_rlnMagMat11\n_rlnCtfDataAreCtfPremultiplied\n_rlnPhaseShift\n",
      "0.25 -0.5 [0.1,-0.2,3,0,0,4] [1,2,3.5] 1.01 0.002 -0.003 0.995 1 45");
  const OpticsGroup& g = t.optics[0];
  EXPECT_EQ(g.beam_tilt_x, 0.25);
  EXPECT_EQ(g.beam_tilt_y, -0.5);
  EXPECT_EQ(g.odd_zernike, (std::vector<double>{0.1, -0.2, 3, 0, 0, 4}));
  EXPECT_EQ(g.even_zernike, (std::vector<double>{1, 2, 3.5}));
  EXPECT_EQ(g.mag_matrix, (std::array<double, 4>{1.01, 0.002, -0.003, 0.995}));
  EXPECT_TRUE(g.ctf_premultiplied);
  // rlnPhaseShift given per optics group applies to its particles (as RELION's CTF reader).
  EXPECT_EQ(t.phase_shift[0], 45);
  EXPECT_EQ(t.phase_shift[1], 45);
  const std::string text = star::to_string(t.sync());
  EXPECT_NE(text.find(" [0.1,-0.2,3,0,0,4] [1,2,3.5] "), std::string::npos) << text;  // bare, as RELION writes
  ParticleTable again = ParticleTable::from_document(star::parse(text, "again.star"));
  EXPECT_EQ(again.optics[0].odd_zernike, g.odd_zernike);
  EXPECT_EQ(again.optics[0].mag_matrix, g.mag_matrix);
  EXPECT_EQ(again.phase_shift, t.phase_shift);
  // Defocus V defaults to U (RELION's CTF reader).
  ParticleTable u = ParticleTable::from_document(star::parse(
      "data_optics\nloop_\n_rlnOpticsGroup\n_rlnVoltage\n1 300\n\ndata_particles\nloop_\n_rlnImageName\n"
      "_rlnDefocusU\n_rlnOpticsGroup\n1@x.mrcs 12000 1\n",
      "u.star"));
  EXPECT_EQ(u.defocus_v[0], 12000);
  // A RELION 3.0 file's per-particle beam tilt makes optics groups.
  ParticleTable v = ParticleTable::from_document(star::parse(
      "data_\nloop_\n_rlnImageName\n_rlnVoltage\n_rlnBeamTiltX\n_rlnBeamTiltY\n1@x.mrcs 300 0.1 0\n2@x.mrcs 300 0.2 0\n"
      "3@x.mrcs 300 0.1 0\n",
      "v.star"));
  ASSERT_EQ(v.optics.size(), 2u);
  EXPECT_EQ(v.optics[1].beam_tilt_x, 0.2);
  EXPECT_EQ(v.optics_index, (std::vector<int>{0, 1, 0}));
  EXPECT_FALSE(v.particles_block().has("rlnBeamTiltX"));
}

TEST(Projection, MappedEqualsPlainForTheIdentity) {
  const int n = 24;
  Volume map(n, n, n);
  for (size_t i = 0; i < map.size(); ++i) map[i] = float(std::sin(0.37 * double(i)) * std::cos(0.011 * double(i)));
  const Projector P(map, 2);
  const Mat3 A = euler_to_matrix(31, 72, -40);
  Grid<cfloat> a, b;
  P.project(A, a);
  P.project_mapped(A, kIdentity2, b, n);
  ASSERT_TRUE(a.same_shape(b));
  for (size_t k = 0; k < a.size(); ++k) EXPECT_EQ(a[k], b[k]) << k;
  // Back-projection: the same accumulators.
  BackProjector x(n, 2), y(n, 2);
  Grid<float> w(a.nx(), a.ny(), 1, 0.7f);
  x.insert(a, w, A);
  y.insert_mapped(a, w, A, kIdentity2);
  const auto xd = x.data_values(), yd = y.data_values();
  const auto xw = x.weight_values(), yw = y.weight_values();
  EXPECT_TRUE(std::equal(xd.begin(), xd.end(), yd.begin(), yd.end()));
  EXPECT_TRUE(std::equal(xw.begin(), xw.end(), yw.begin(), yw.end()));
}

TEST(Projection, ScaledImageSamplesTheMapAtItsOwnFrequencies) {
  // A map of box 32 at 2 Å; an image of box 40 at 1.6 Å (the same 64 Å field): image pixel k is the
  // map's frequency k * 64/64 = k, so the image's transform equals the map's projection on the shared
  // frequencies (|k| <= 16) and is zero beyond the map's Nyquist.
  const int n = 32, m = 40;
  Volume map(n, n, n);
  for (size_t i = 0; i < map.size(); ++i) map[i] = float(std::cos(0.21 * double(i)) + 0.3 * std::sin(0.05 * double(i)));
  const Projector P(map, 2);
  const Mat3 A = euler_to_matrix(-12, 100, 33);
  const Mat2 T = {{{n * 2.0 / (m * 1.6), 0}, {0, n * 2.0 / (m * 1.6)}}};
  Grid<cfloat> a, b;
  P.project(A, a);
  P.project_mapped(A, T, b, m);
  for (int iy = 0; iy < m; ++iy)
    for (int x = 0; x <= m / 2; ++x) {
      const int y = fft_freq(iy, m);
      if (x * x + y * y < 16 * 16) {  // (the Nyquist row is stored as +16 in the map, -16 in the image)
        EXPECT_LT(std::abs(b(x, iy) - a(x, fft_index(y, n))), 1e-3f * std::abs(a(0, 0))) << x << " " << y;
      } else if (x * x + y * y > 16 * 16 + 1) {
        EXPECT_EQ(b(x, iy), cfloat(0, 0)) << x << " " << y;
      }
    }
}

TEST(ImageLabels, DocumentedInFormatsMd) {
  // docs/formats.md shows the list as a table "| `label` | use | meaning |": every entry is there.
  std::ifstream f(std::string(REGULA_TEST_DATA) + "/../../docs/formats.md");
  ASSERT_TRUE(f.good());
  const std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  for (const ImageLabel& l : image_labels()) {
    const char* use = l.use == LabelUse::Modelled ? "modelled" : l.use == LabelUse::NoEffect ? "no effect" : "refused";
    const std::string row = "| `" + std::string(l.name) + "` | " + use + " | " + std::string(l.meaning) + " |";
    EXPECT_NE(text.find(row), std::string::npos) << row;
  }
}
