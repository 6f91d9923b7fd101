#include "regula/io/movie.hpp"

#include <optional>

#include "regula/io/mrc.hpp"
#include "regula/io/tiff.hpp"

namespace regula {

struct MovieReader::Impl {
  std::string path;
  std::optional<mrc::StackReader> mrc;
  std::optional<tiff::TiffReader> tif;
};

MovieReader::MovieReader(const std::string& path) : impl_(std::make_unique<Impl>()) {
  impl_->path = path;
  if (tiff::is_tiff_name(path))
    impl_->tif.emplace(path);
  else
    impl_->mrc.emplace(path);
}
MovieReader::~MovieReader() = default;
MovieReader::MovieReader(MovieReader&&) noexcept = default;
MovieReader& MovieReader::operator=(MovieReader&&) noexcept = default;

int MovieReader::frames() const { return impl_->tif ? impl_->tif->count() : impl_->mrc->count(); }
int MovieReader::nx() const { return impl_->tif ? impl_->tif->nx() : impl_->mrc->nx(); }
int MovieReader::ny() const { return impl_->tif ? impl_->tif->ny() : impl_->mrc->ny(); }
double MovieReader::pixel_size() const {
  return impl_->tif ? impl_->tif->pixel_size() : impl_->mrc->header().pixel_size();
}
const std::string& MovieReader::path() const { return impl_->path; }
void MovieReader::read_into(int index, float* out) { read_into(index, out, size_t(nx())); }
void MovieReader::read_into(int index, float* out, size_t row_stride) {
  if (impl_->tif)
    impl_->tif->read_into(index, out, row_stride);
  else
    impl_->mrc->read_into(index, out, row_stride);
}
Grid<float> MovieReader::read(int index) {
  Grid<float> g(nx(), ny());
  read_into(index, g.data());
  return g;
}

}  // namespace regula
