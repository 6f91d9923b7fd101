#include "regula/micrograph/motion_model.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "regula/core/error.hpp"
#include "regula/io/star.hpp"

namespace regula {

namespace {
void terms(double z, double x, double y, double t[18]) {
  const double zs[3] = {z, z * z, z * z * z};
  const double sp[6] = {1, x, x * x, y, y * y, x * y};
  for (int a = 0; a < 6; ++a)
    for (int b = 0; b < 3; ++b) t[3 * a + b] = sp[a] * zs[b];
}
}  // namespace

void PolynomialMotion::shift_at(double z, double x, double y, double& sx, double& sy) const {
  double t[18];
  terms(z, x, y, t);
  sx = sy = 0;
  for (int i = 0; i < 18; ++i) {
    sx += cx[size_t(i)] * t[i];
    sy += cy[size_t(i)] * t[i];
  }
}

void PolynomialMotion::row_quadratic(double z, double y, double ax[3], double ay[3]) const {
  // Spatial terms (1, x, x^2, y, y^2, xy), each times c z + c z^2 + c z^3.
  double px[6], py[6];
  for (int a = 0; a < 6; ++a) {
    px[a] = cx[size_t(3 * a)] * z + cx[size_t(3 * a + 1)] * z * z + cx[size_t(3 * a + 2)] * z * z * z;
    py[a] = cy[size_t(3 * a)] * z + cy[size_t(3 * a + 1)] * z * z + cy[size_t(3 * a + 2)] * z * z * z;
  }
  ax[0] = px[0] + px[3] * y + px[4] * y * y;
  ax[1] = px[1] + px[5] * y;
  ax[2] = px[2];
  ay[0] = py[0] + py[3] * y + py[4] * y * y;
  ay[1] = py[1] + py[5] * y;
  ay[2] = py[2];
}

bool fit_polynomial_motion(const std::vector<double>& z, const std::vector<double>& x, const std::vector<double>& y,
                           const std::vector<double>& sx, const std::vector<double>& sy, PolynomialMotion& m,
                           const std::vector<int>* track, std::vector<double>* offset_x, std::vector<double>* offset_y,
                           double* ridge) {
  const size_t n = z.size();
  if (n <= 18) return false;
  // With tracks, the constants are eliminated: terms and observations minus their track's means.
  size_t K = 0;
  if (track)
    for (int k : *track) K = std::max(K, size_t(k) + 1);
  std::vector<double> mean_t(K * 18, 0.0), mean_x(K, 0.0), mean_y(K, 0.0), count(K, 0.0);
  double t[18];
  for (size_t i = 0; track && i < n; ++i) {
    const size_t k = size_t((*track)[i]);
    terms(z[i], x[i], y[i], t);
    for (int a = 0; a < 18; ++a) mean_t[k * 18 + size_t(a)] += t[a];
    mean_x[k] += sx[i];
    mean_y[k] += sy[i];
    count[k] += 1;
  }
  for (size_t k = 0; k < K; ++k) {
    if (count[k] == 0) continue;
    for (int a = 0; a < 18; ++a) mean_t[k * 18 + size_t(a)] /= count[k];
    mean_x[k] /= count[k];
    mean_y[k] /= count[k];
  }
  double A[18][18] = {}, bx[18] = {}, by[18] = {}, vv = 0;
  for (size_t i = 0; i < n; ++i) {
    terms(z[i], x[i], y[i], t);
    double vx = sx[i], vy = sy[i];
    if (track) {
      const size_t k = size_t((*track)[i]);
      for (int a = 0; a < 18; ++a) t[a] -= mean_t[k * 18 + size_t(a)];
      vx -= mean_x[k];
      vy -= mean_y[k];
    }
    vv += vx * vx + vy * vy;
    for (int a = 0; a < 18; ++a) {
      bx[a] += t[a] * vx;
      by[a] += t[a] * vy;
      for (int b = 0; b < 18; ++b) A[a][b] += t[a] * t[b];
    }
  }
  // Solves (A + (eps + lambda) diag(A)) c = rhs for `nrhs` right-hand sides (columns of 18), by
  // Cholesky; eps is a tiny ridge (the columns differ in scale by z^3). False when not positive.
  const auto solve = [&](double lambda, const double* rhs, double* out, int nrhs) {
    double L[18][18] = {};
    for (int i = 0; i < 18; ++i)
      for (int j = 0; j <= i; ++j) {
        double v = A[i][j] + (i == j ? (1e-12 + lambda) * A[i][i] : 0.0);
        for (int k = 0; k < j; ++k) v -= L[i][k] * L[j][k];
        if (i == j) {
          if (!(v > 0)) return false;
          L[i][i] = std::sqrt(v);
        } else {
          L[i][j] = v / L[j][j];
        }
      }
    for (int r = 0; r < nrhs; ++r) {
      double w[18];
      for (int i = 0; i < 18; ++i) {
        double v = rhs[r * 18 + i];
        for (int k = 0; k < i; ++k) v -= L[i][k] * w[k];
        w[i] = v / L[i][i];
      }
      for (int i = 17; i >= 0; --i) {
        double v = w[i];
        for (int k = i + 1; k < 18; ++k) v -= L[k][i] * out[r * 18 + k];
        out[r * 18 + i] = v / L[i][i];
      }
    }
    return true;
  };
  double rhs[2 * 18];
  std::copy(bx, bx + 18, rhs);
  std::copy(by, by + 18, rhs + 18);
  double best_lambda = 0;
  if (ridge) {
    // Generalised cross-validation over lambda (x and y together): n' RSS / (n' - 2 tr H)^2 with
    // n' = 2 (n - K) data left after the track constants and H = (A + lambda diag A)^-1 A per axis.
    double AA[18 * 18];
    for (int i = 0; i < 18; ++i)
      for (int j = 0; j < 18; ++j) AA[j * 18 + i] = A[i][j];
    const double dof = 2.0 * double(n - K);
    double best = std::numeric_limits<double>::infinity();
    for (int l = -1; l <= 40; ++l) {
      const double lambda = l < 0 ? 0.0 : std::pow(10.0, -6.0 + 9.0 * l / 40.0);
      double c[2 * 18], h[18 * 18];
      if (!solve(lambda, rhs, c, 2) || !solve(lambda, AA, h, 18)) continue;
      double trace = 0, rss = vv;
      for (int i = 0; i < 18; ++i) trace += h[i * 18 + i];
      for (int r = 0; r < 2; ++r) {
        double cb = 0, cac = 0;
        for (int i = 0; i < 18; ++i) {
          cb += c[r * 18 + i] * rhs[r * 18 + i];
          for (int j = 0; j < 18; ++j) cac += c[r * 18 + i] * A[i][j] * c[r * 18 + j];
        }
        rss += cac - 2 * cb;
      }
      const double left = dof - 2 * trace;
      if (left <= 0) continue;
      const double score = dof * std::max(rss, 0.0) / (left * left);
      if (score < best) {
        best = score;
        best_lambda = lambda;
      }
    }
    *ridge = best_lambda;
  }
  double c[2 * 18];
  if (!solve(best_lambda, rhs, c, 2)) return false;
  std::copy(c, c + 18, m.cx.begin());
  std::copy(c + 18, c + 36, m.cy.begin());
  if (offset_x && offset_y) {  // each track's constant: its mean misfit
    offset_x->assign(K, 0.0);
    offset_y->assign(K, 0.0);
    for (size_t k = 0; k < K; ++k) {
      double fx = 0, fy = 0;
      for (int a = 0; a < 18; ++a) {
        fx += m.cx[size_t(a)] * mean_t[k * 18 + size_t(a)];
        fy += m.cy[size_t(a)] * mean_t[k * 18 + size_t(a)];
      }
      (*offset_x)[k] = mean_x[k] - fx;
      (*offset_y)[k] = mean_y[k] - fy;
    }
  }
  return true;
}

void write_movie_motion(const std::string& path, const MovieMotion& m) {
  star::Document d;
  auto& g = d.add_block("general", false);
  auto setn = [&](const char* k, double v) {
    g.add_column(k);
    g.set_number(0, g.column(k), v);
  };
  setn("rlnImageSizeX", m.width);
  setn("rlnImageSizeY", m.height);
  setn("rlnImageSizeZ", m.frames);
  g.set("rlnMicrographMovieName", m.movie);
  if (!m.gain.empty()) g.set("rlnMicrographGainName", m.gain);
  if (!m.defect.empty()) g.set("rlnMicrographDefectFile", m.defect);
  setn("rlnMicrographBinning", m.binning);
  if (m.angpix > 0) setn("rlnMicrographOriginalPixelSize", m.angpix);
  if (m.dose_per_frame >= 0) setn("rlnMicrographDoseRate", m.dose_per_frame);
  if (m.preexposure >= 0) setn("rlnMicrographPreExposure", m.preexposure);
  if (m.voltage > 0) setn("rlnVoltage", m.voltage);
  setn("rlnMicrographStartFrame", m.first_frame);
  setn("rlnMotionModelVersion", m.has_model ? 1 : 0);
  auto& gs = d.add_block("global_shift", true);
  std::vector<int> fr;
  for (int f = 0; f < m.frames; ++f) {
    gs.add_row();
    fr.push_back(f + 1);
  }
  gs.set_column("rlnMicrographFrameNumber", fr);
  gs.set_column("rlnMicrographShiftX", m.shift_x);
  gs.set_column("rlnMicrographShiftY", m.shift_y);
  if (m.has_model) {
    auto& lm = d.add_block("local_motion_model", true);
    std::vector<int> idx;
    std::vector<double> c;
    for (int i = 0; i < 36; ++i) {
      lm.add_row();
      idx.push_back(i);
      c.push_back(i < 18 ? m.model.cx[size_t(i)] : m.model.cy[size_t(i - 18)]);
    }
    lm.set_column("rlnMotionModelCoeffsIdx", idx);
    lm.set_column("rlnMotionModelCoeff", c);
  }
  auto& hp = d.add_block("hot_pixels", true);
  std::vector<double> hx(m.hot_x.begin(), m.hot_x.end()), hy(m.hot_y.begin(), m.hot_y.end());
  for (size_t i = 0; i < hx.size(); ++i) hp.add_row();
  hp.set_column("rlnCoordinateX", hx);
  hp.set_column("rlnCoordinateY", hy);
  auto& ls = d.add_block("local_shift", true);
  std::vector<int> lf;
  std::vector<double> lx, ly, lsx, lsy;
  for (auto& o : m.local) {
    ls.add_row();
    lf.push_back(int(std::lround(o.frame)));
    lx.push_back(o.x);
    ly.push_back(o.y);
    lsx.push_back(o.sx);
    lsy.push_back(o.sy);
  }
  ls.set_column("rlnMicrographFrameNumber", lf);
  ls.set_column("rlnCoordinateX", lx);
  ls.set_column("rlnCoordinateY", ly);
  ls.set_column("rlnMicrographShiftX", lsx);
  ls.set_column("rlnMicrographShiftY", lsy);
  star::write(path, d);
}

MovieMotion read_movie_motion(const std::string& path) {
  const star::Document d = star::read(path);
  MovieMotion m;
  const star::Block& g = d.require("general");
  auto num = [&](const char* k, double fb) {
    const int c = g.column(k);
    return c < 0 ? fb : g.number(0, c);
  };
  m.width = int(num("rlnImageSizeX", 0));
  m.height = int(num("rlnImageSizeY", 0));
  m.frames = int(num("rlnImageSizeZ", 0));
  m.movie = std::string(g.get("rlnMicrographMovieName"));
  m.gain = std::string(g.get("rlnMicrographGainName"));
  m.defect = std::string(g.get("rlnMicrographDefectFile"));
  m.binning = num("rlnMicrographBinning", 1);
  m.angpix = num("rlnMicrographOriginalPixelSize", -1);
  m.dose_per_frame = num("rlnMicrographDoseRate", -1);
  m.preexposure = num("rlnMicrographPreExposure", -1);
  m.voltage = num("rlnVoltage", -1);
  m.first_frame = int(num("rlnMicrographStartFrame", 1));
  m.shift_x.assign(size_t(std::max(0, m.frames)), -9999);
  m.shift_y.assign(size_t(std::max(0, m.frames)), -9999);
  const star::Block& gs = d.require("global_shift");
  const int cf = gs.require_column("rlnMicrographFrameNumber"), cx = gs.require_column("rlnMicrographShiftX"),
            cy = gs.require_column("rlnMicrographShiftY");
  for (size_t r = 0; r < gs.rows(); ++r) {
    const long f = gs.integer(r, cf);
    if (f < 1 || f > m.frames) input_error("{}: frame {} outside 1..{}", gs.where(r), f, m.frames);
    m.shift_x[size_t(f - 1)] = gs.number(r, cx);
    m.shift_y[size_t(f - 1)] = gs.number(r, cy);
  }
  if (num("rlnMotionModelVersion", 0) == 1) {
    const star::Block& lm = d.require("local_motion_model");
    const int ci = lm.require_column("rlnMotionModelCoeffsIdx"), cc = lm.require_column("rlnMotionModelCoeff");
    for (size_t r = 0; r < lm.rows(); ++r) {
      const long i = lm.integer(r, ci);
      if (i < 0 || i >= 36) input_error("{}: coefficient index {} outside 0..35", lm.where(r), i);
      (i < 18 ? m.model.cx[size_t(i)] : m.model.cy[size_t(i - 18)]) = lm.number(r, cc);
    }
    m.has_model = true;
  }
  if (const star::Block* hp = d.find("hot_pixels"); hp && hp->rows() > 0) {
    const int hx = hp->require_column("rlnCoordinateX"), hy = hp->require_column("rlnCoordinateY");
    for (size_t r = 0; r < hp->rows(); ++r) {
      m.hot_x.push_back(int(hp->number(r, hx)));
      m.hot_y.push_back(int(hp->number(r, hy)));
    }
  }
  return m;
}

}  // namespace regula
