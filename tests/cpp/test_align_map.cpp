// regula fsc --align (jobs/fsc.hpp, align_map): a map turned, mirrored and shifted by known amounts is
// put back onto the original; the FSC of the two then holds to the shells that two trilinear
// re-samplings keep.
#include <gtest/gtest.h>

#include <cstdio>
#include <string>

#include "regula/imaging/filter.hpp"
#include "regula/imaging/fsc.hpp"
#include "regula/io/mrc.hpp"
#include "regula/jobs/fsc.hpp"
#include "regula/jobs/initial_model.hpp"
#include "regula/sampling/euler.hpp"

using namespace regula;

namespace {

Volume mirror(const Volume& v) {
  const int n = v.nz();
  Volume out(v.nx(), v.ny(), n);
  for (int z = 0; z < n; ++z)
    for (int y = 0; y < v.ny(); ++y)
      for (int x = 0; x < v.nx(); ++x) out(x, y, z) = v(x, y, (n - z) % n);
  return out;
}

}  // namespace

TEST(AlignMap, PutsATurnedMirroredShiftedMapBack) {
  const Volume v = mrc::read(std::string(REGULA_TEST_DATA) + "/proj/clean70S_crop48.mrc");
  struct Case {
    Euler q;
    bool mirrored;
    int d[3];
  };
  for (const Case& c : {Case{{30, 50, -20}, false, {2, -1, 3}}, Case{{-100, 120, 75}, true, {0, 3, -2}},
                        Case{{170, 95, 10}, true, {-3, 0, 1}}}) {
    const Volume turned = rotate_map(c.mirrored ? mirror(v) : v, euler_to_matrix(c.q.rot, c.q.tilt, c.q.psi));
    const Volume w = shift_wrapped(turned, c.d[0], c.d[1], c.d[2]);
    FscJobResult r;
    const Volume back = align_map(v, w, r, 2);
    const std::vector<double> f = fsc(v, back), f0 = fsc(v, w);
    std::printf("turn (%g %g %g)%s shift (%d %d %d): found%s, correlation %.3f, FSC at shells 4/8/12 %.3f %.3f %.3f "
                "(before %.3f)\n",
                c.q.rot, c.q.tilt, c.q.psi, c.mirrored ? " mirrored" : "", c.d[0], c.d[1], c.d[2],
                r.mirrored ? " mirrored" : "", r.correlation, f[4], f[8], f[12], f0[8]);
    EXPECT_EQ(r.mirrored, c.mirrored);
    EXPECT_GT(r.correlation, 0.9);
    for (int s = 1; s <= 8; ++s) EXPECT_GT(f[size_t(s)], 0.9) << "shell " << s;
    EXPECT_LT(f0[8], 0.5);  // (the test is not trivial: before the alignment the maps differ)
  }
}
