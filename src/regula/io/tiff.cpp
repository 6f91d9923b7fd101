#include "regula/io/tiff.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <mutex>

#include <tiffio.h>
#include <unistd.h>

#include "regula/core/error.hpp"

namespace regula::tiff {
namespace {

// libtiff reports errors through a global handler; the last message of this thread is kept so
// that exceptions can carry it (the default handler would print to stderr).
thread_local std::string g_last_error;
void error_handler(const char* module, const char* fmt, va_list ap) {
  char buf[512];
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  g_last_error = std::string(module ? module : "") + (module ? ": " : "") + buf;
}
void warning_handler(const char*, const char*, va_list) {}  // unknown tags etc.: ignored
void install_handlers() {
  static std::once_flag once;
  std::call_once(once, [] {
    TIFFSetErrorHandler(error_handler);
    TIFFSetWarningHandler(warning_handler);
  });
}
std::string last_error() {
  std::string e = g_last_error;
  g_last_error.clear();
  return e.empty() ? "libtiff gave no reason" : e;
}

struct TiffCloser {
  void operator()(TIFF* t) const {
    if (t) TIFFClose(t);
  }
};
using TiffPtr = std::unique_ptr<TIFF, TiffCloser>;

}  // namespace

bool is_tiff_name(const std::string& path) {
  std::string ext = std::filesystem::path(path).extension().string();
  for (auto& c : ext) c = char(std::tolower((unsigned char)c));
  return ext == ".tif" || ext == ".tiff";
}

struct TiffReader::Impl {
  std::string path;
  TiffPtr t;
  int pages = 0, nx = 0, ny = 0, bits = 0, format = SAMPLEFORMAT_UINT;
  double pixel = 0;
  std::vector<unsigned char> buf;
};

TiffReader::TiffReader(const std::string& path) : impl_(std::make_unique<Impl>()) {
  install_handlers();
  impl_->path = path;
  if (!std::filesystem::exists(path)) input_error("{}: no such file", path);
  impl_->t.reset(TIFFOpen(path.c_str(), "r"));
  if (!impl_->t) input_error("{}: not a readable TIFF file ({})", path, last_error());
  TIFF* t = impl_->t.get();
  uint32_t w = 0, h = 0;
  uint16_t bits = 0, fmt = SAMPLEFORMAT_UINT, spp = 1;
  if (TIFFGetField(t, TIFFTAG_IMAGEWIDTH, &w) != 1 || TIFFGetField(t, TIFFTAG_IMAGELENGTH, &h) != 1 || w == 0 || h == 0)
    input_error("{}: page 1 has no image width or length", path);
  TIFFGetFieldDefaulted(t, TIFFTAG_BITSPERSAMPLE, &bits);
  TIFFGetFieldDefaulted(t, TIFFTAG_SAMPLEFORMAT, &fmt);
  TIFFGetFieldDefaulted(t, TIFFTAG_SAMPLESPERPIXEL, &spp);
  if (spp != 1) input_error("{}: {} samples per pixel; a movie frame has one", path, spp);
  const bool ok = ((bits == 8 || bits == 16) && (fmt == SAMPLEFORMAT_UINT || fmt == SAMPLEFORMAT_INT)) ||
                  (bits == 32 && fmt == SAMPLEFORMAT_IEEEFP);
  if (!ok)
    input_error("{}: unsupported TIFF samples ({} bits, sample format {}); expected 8/16-bit integers or 32-bit floats",
                path, bits, fmt);
  if (w > 65536 || h > 65536) input_error("{}: page 1 is {}x{}, larger than any detector", path, w, h);
  impl_->nx = int(w);
  impl_->ny = int(h);
  impl_->bits = bits;
  impl_->format = fmt;
  uint16_t unit = 0;
  float xres = 0;
  if (TIFFGetField(t, TIFFTAG_RESOLUTIONUNIT, &unit) == 1 && TIFFGetField(t, TIFFTAG_XRESOLUTION, &xres) == 1 &&
      xres > 0) {
    if (unit == RESUNIT_CENTIMETER) impl_->pixel = 1e8 / xres;
    if (unit == RESUNIT_INCH) impl_->pixel = 2.54e8 / xres;
  }
  impl_->pages = int(TIFFNumberOfDirectories(t));
  if (impl_->pages < 1) input_error("{}: no pages", path);
}
TiffReader::~TiffReader() = default;
TiffReader::TiffReader(TiffReader&&) noexcept = default;
TiffReader& TiffReader::operator=(TiffReader&&) noexcept = default;

int TiffReader::count() const { return impl_->pages; }
int TiffReader::nx() const { return impl_->nx; }
int TiffReader::ny() const { return impl_->ny; }
int TiffReader::bits_per_sample() const { return impl_->bits; }
bool TiffReader::is_float() const { return impl_->format == SAMPLEFORMAT_IEEEFP; }
double TiffReader::pixel_size() const { return impl_->pixel; }
const std::string& TiffReader::path() const { return impl_->path; }

void TiffReader::read_into(int index, float* out) { read_into(index, out, size_t(impl_->nx)); }

void TiffReader::read_into(int index, float* out, size_t row_stride) {
  Impl& m = *impl_;
  if (index < 0 || index >= m.pages)
    input_error("{}: frame {} (1-based) requested but the file has {} pages", m.path, index + 1, m.pages);
  TIFF* t = m.t.get();
  if (!TIFFSetDirectory(t, uint16_t(index)))
    input_error("{}: page {} of {} cannot be opened ({})", m.path, index + 1, m.pages, last_error());
  uint32_t w = 0, h = 0;
  uint16_t bits = 0, fmt = SAMPLEFORMAT_UINT;
  TIFFGetField(t, TIFFTAG_IMAGEWIDTH, &w);
  TIFFGetField(t, TIFFTAG_IMAGELENGTH, &h);
  TIFFGetFieldDefaulted(t, TIFFTAG_BITSPERSAMPLE, &bits);
  TIFFGetFieldDefaulted(t, TIFFTAG_SAMPLEFORMAT, &fmt);
  if (int(w) != m.nx || int(h) != m.ny || bits != m.bits || fmt != m.format)
    input_error("{}: page {} of {} is {}x{} with {}-bit samples (format {}), the first page is {}x{} with {}-bit "
                "samples (format {})", m.path, index + 1, m.pages, w, h, bits, fmt, m.nx, m.ny, m.bits, m.format);
  const size_t bps = size_t(m.bits / 8);
  const size_t row = size_t(m.nx) * bps;
  m.buf.assign(row * size_t(m.ny), 0);
  if (TIFFIsTiled(t)) {
    uint32_t tw = 0, th = 0;
    TIFFGetField(t, TIFFTAG_TILEWIDTH, &tw);
    TIFFGetField(t, TIFFTAG_TILELENGTH, &th);
    if (tw == 0 || th == 0) input_error("{}: page {}: tiles of size 0", m.path, index + 1);
    std::vector<unsigned char> tile(size_t(TIFFTileSize(t)));
    for (uint32_t y0 = 0; y0 < h; y0 += th)
      for (uint32_t x0 = 0; x0 < w; x0 += tw) {
        if (TIFFReadTile(t, tile.data(), x0, y0, 0, 0) < 0)
          input_error("{}: page {} of {}: cannot read the tile at ({}, {}) ({})", m.path, index + 1, m.pages, x0, y0,
                      last_error());
        for (uint32_t y = y0; y < std::min(h, y0 + th); ++y)
          std::memcpy(m.buf.data() + y * row + x0 * bps, tile.data() + (y - y0) * tw * bps,
                      std::min(tw, w - x0) * bps);
      }
  } else {
    const tstrip_t strips = TIFFNumberOfStrips(t);
    size_t offset = 0;
    for (tstrip_t s = 0; s < strips && offset < m.buf.size(); ++s) {
      const tmsize_t got = TIFFReadEncodedStrip(t, s, m.buf.data() + offset, tmsize_t(m.buf.size() - offset));
      if (got < 0)
        input_error("{}: page {} of {}: strip {} cannot be read (truncated or corrupt: {})", m.path, index + 1,
                    m.pages, s, last_error());
      offset += size_t(got);
    }
    if (offset < m.buf.size())
      input_error("{}: page {} of {} has {} bytes of pixels, expected {}", m.path, index + 1, m.pages, offset,
                  m.buf.size());
  }
  for (int y = 0; y < m.ny; ++y) {
    const unsigned char* src = m.buf.data() + size_t(m.ny - 1 - y) * row;  // row 0 of the file is the top
    float* dst = out + size_t(y) * row_stride;
    if (m.bits == 8 && m.format == SAMPLEFORMAT_UINT)
      for (int x = 0; x < m.nx; ++x) dst[x] = float(src[x]);
    else if (m.bits == 8)
      for (int x = 0; x < m.nx; ++x) dst[x] = float(int8_t(src[x]));
    else if (m.bits == 16 && m.format == SAMPLEFORMAT_UINT)
      for (int x = 0; x < m.nx; ++x) {
        uint16_t v;
        std::memcpy(&v, src + 2 * x, 2);
        dst[x] = float(v);
      }
    else if (m.bits == 16)
      for (int x = 0; x < m.nx; ++x) {
        int16_t v;
        std::memcpy(&v, src + 2 * x, 2);
        dst[x] = float(v);
      }
    else
      std::memcpy(dst, src, row);
  }
}

Grid<float> TiffReader::read(int index) {
  Grid<float> g(nx(), ny());
  read_into(index, g.data());
  return g;
}

// ---------------------------------------------------------------- writing

struct TiffWriter::Impl {
  std::string path, tmp;
  TiffPtr t;
  int nx = 0, ny = 0, pages = 0;
  TiffWriteOptions opt;
  bool committed = false;
  std::vector<unsigned char> row;
};

TiffWriter::TiffWriter(const std::string& path, int nx, int ny, const TiffWriteOptions& opt)
    : impl_(std::make_unique<Impl>()) {
  install_handlers();
  if (opt.bits != 8 && opt.bits != 16 && opt.bits != 32)
    input_error("{}: TIFF samples of {} bits: expected 8, 16 or 32", path, opt.bits);
  if (nx <= 0 || ny <= 0) input_error("{}: frame size must be positive, got {}x{}", path, nx, ny);
  impl_->path = path;
  const auto p = std::filesystem::path(path);
  impl_->tmp = (p.parent_path() / ("." + p.filename().string() + fmt::format(".{}.tmp", ::getpid()))).string();
  impl_->nx = nx;
  impl_->ny = ny;
  impl_->opt = opt;
  impl_->t.reset(TIFFOpen(impl_->tmp.c_str(), "w"));
  if (!impl_->t) runtime_error("{}: cannot create ({})", path, last_error());
}

TiffWriter::~TiffWriter() {
  if (!impl_->committed) {
    impl_->t.reset();
    std::error_code ec;
    std::filesystem::remove(impl_->tmp, ec);
  }
}

void TiffWriter::append(const float* frame) {
  Impl& m = *impl_;
  TIFF* t = m.t.get();
  const int bits = m.opt.bits;
  TIFFSetField(t, TIFFTAG_IMAGEWIDTH, uint32_t(m.nx));
  TIFFSetField(t, TIFFTAG_IMAGELENGTH, uint32_t(m.ny));
  TIFFSetField(t, TIFFTAG_BITSPERSAMPLE, uint16_t(bits));
  TIFFSetField(t, TIFFTAG_SAMPLESPERPIXEL, uint16_t(1));
  TIFFSetField(t, TIFFTAG_SAMPLEFORMAT, uint16_t(bits == 32 ? SAMPLEFORMAT_IEEEFP : SAMPLEFORMAT_UINT));
  TIFFSetField(t, TIFFTAG_PHOTOMETRIC, uint16_t(PHOTOMETRIC_MINISBLACK));
  TIFFSetField(t, TIFFTAG_PLANARCONFIG, uint16_t(PLANARCONFIG_CONTIG));
  TIFFSetField(t, TIFFTAG_COMPRESSION, uint16_t(m.opt.lzw ? COMPRESSION_LZW : COMPRESSION_NONE));
  TIFFSetField(t, TIFFTAG_ROWSPERSTRIP, uint32_t(std::max(1, 65536 / std::max(1, m.nx * bits / 8))));
  TIFFSetField(t, TIFFTAG_SUBFILETYPE, uint32_t(FILETYPE_PAGE));
  TIFFSetField(t, TIFFTAG_PAGENUMBER, uint16_t(m.pages), uint16_t(0));
  if (m.opt.pixel_size > 0) {
    TIFFSetField(t, TIFFTAG_RESOLUTIONUNIT, uint16_t(RESUNIT_CENTIMETER));
    TIFFSetField(t, TIFFTAG_XRESOLUTION, float(1e8 / m.opt.pixel_size));
    TIFFSetField(t, TIFFTAG_YRESOLUTION, float(1e8 / m.opt.pixel_size));
  }
  const size_t bps = size_t(bits / 8);
  m.row.resize(size_t(m.nx) * bps);
  const double hi = bits == 8 ? 255.0 : 65535.0;
  for (int r = 0; r < m.ny; ++r) {
    const float* src = frame + size_t(m.ny - 1 - r) * size_t(m.nx);  // first file row = top = last y
    if (bits == 32) {
      std::memcpy(m.row.data(), src, m.row.size());
    } else {
      for (int x = 0; x < m.nx; ++x) {
        const double v = std::clamp(std::nearbyint(std::isnan(src[x]) ? 0.0 : double(src[x])), 0.0, hi);
        if (bits == 8) {
          m.row[size_t(x)] = (unsigned char)v;
        } else {
          const uint16_t u = uint16_t(v);
          std::memcpy(m.row.data() + 2 * size_t(x), &u, 2);
        }
      }
    }
    if (TIFFWriteScanline(t, m.row.data(), uint32_t(r), 0) < 0)
      runtime_error("{}: cannot write page {} row {} ({})", m.path, m.pages + 1, r, last_error());
  }
  if (!TIFFWriteDirectory(t)) runtime_error("{}: cannot write page {} ({})", m.path, m.pages + 1, last_error());
  ++m.pages;
}

void TiffWriter::commit() {
  Impl& m = *impl_;
  if (m.pages == 0) input_error("{}: no frames to write", m.path);
  m.t.reset();  // TIFFClose flushes
  std::error_code ec;
  std::filesystem::rename(m.tmp, m.path, ec);
  if (ec) runtime_error("{}: cannot rename {} into place: {}", m.path, m.tmp, ec.message());
  m.committed = true;
}

void write(const std::string& path, const std::vector<Grid<float>>& frames, const TiffWriteOptions& opt) {
  if (frames.empty()) input_error("{}: no frames to write", path);
  TiffWriter w(path, frames[0].nx(), frames[0].ny(), opt);
  for (size_t i = 0; i < frames.size(); ++i) {
    if (frames[i].nx() != frames[0].nx() || frames[i].ny() != frames[0].ny())
      input_error("{}: frame {} is {}x{}, the first is {}x{}", path, i + 1, frames[i].nx(), frames[i].ny(),
                  frames[0].nx(), frames[0].ny());
    w.append(frames[i].data());
  }
  w.commit();
}

}  // namespace regula::tiff
