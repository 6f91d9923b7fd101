// Zernike polynomials and RELION's order of aberration coefficients
// (rlnOddZernike, rlnEvenZernike).
//
//   Z_n^m(x, y) = R_n^|m|(rho) cos(m phi)     m >= 0
//               = R_n^|m|(rho) sin(|m| phi)   m < 0,     rho = |(x, y)|, phi = atan2(y, x)
//   R_n^m(rho)  = sum_{k=0}^{(n-m)/2} (-1)^k (n-k)! / (k! ((n+m)/2-k)! ((n-m)/2-k)!) rho^(n-2k)
//
// evaluated at the spatial frequency (x, y) in 1/Å itself (no pupil radius: RELION's
// aberration coefficients multiply these unnormalised polynomials, giving radians).
//
// Coefficient order (RELION 3.1-5): by increasing n, then m from -n to n in steps of 2.
//   odd  (n = 1, 3, 5...): i = 0..1 -> (n, m) = (1,-1) (1,1); i = 2..5 -> (3,-3) (3,-1) (3,1) (3,3); ...
//   even (n = 0, 2, 4...): i = 0 -> (0,0); i = 1..3 -> (2,-2) (2,0) (2,2); i = 4..8 -> (4,-4) ... (4,4); ...
#pragma once
#include <span>

namespace regula {

struct ZernikeIndex {
  int n = 0, m = 0;
};

// (n, m) of coefficient i of rlnOddZernike / rlnEvenZernike.
ZernikeIndex odd_zernike_index(int i);
ZernikeIndex even_zernike_index(int i);

// Z_n^m at Cartesian (x, y); 0 when n - |m| is odd or negative.
double zernike(int n, int m, double x, double y);

// sum_i c[i] Z_i(x, y) with RELION's odd or even order.
double odd_zernike_sum(std::span<const double> c, double x, double y);
double even_zernike_sum(std::span<const double> c, double x, double y);

}  // namespace regula
