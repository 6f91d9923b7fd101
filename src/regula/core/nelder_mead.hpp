#pragma once
// Nelder-Mead simplex maximisation (reflection 1, expansion 2, contraction 1/2, shrink 1/2), for small
// smooth problems without derivatives: CTF fits, the polishing prior's hyper-parameters.
#include <functional>
#include <limits>
#include <vector>

namespace regula {

struct NelderMeadOptions {
  std::vector<double> step;  // the initial simplex: x0 and x0 + step[d] e_d (one value: every d)
  double x_tol = 0;          // stop when every vertex lies within x_tol of the best in each coordinate
  double f_tol = -1;         // stop when the best and the worst value differ by less than f_tol
  int max_iterations = std::numeric_limits<int>::max();
  int max_evaluations = std::numeric_limits<int>::max();  // checked before each iteration
  // Called after each iteration with its number, the best vertex and its value.
  std::function<void(int, const std::vector<double>&, double)> report;
};

struct NelderMeadResult {
  std::vector<double> x;  // the best vertex
  double value = 0;
  int iterations = 0, evaluations = 0;
};

NelderMeadResult nelder_mead_maximise(const std::function<double(const std::vector<double>&)>& f,
                                      const std::vector<double>& x0, const NelderMeadOptions& options);

}  // namespace regula
