#include "regula/io/star.hpp"

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>

#include "regula/core/atomic_file.hpp"
#include "regula/core/error.hpp"

namespace regula::star {

namespace {

// A value is 8 bytes: bit 63 selects the table's own buffer (values set in
// code) over the shared source text; bits 24..62 hold the offset, 0..23 the length.
constexpr uint64_t kOwnBit = uint64_t(1) << 63;
constexpr uint64_t kMaxLen = (uint64_t(1) << 24) - 1;
constexpr uint64_t kMaxOffset = (uint64_t(1) << 39) - 1;

inline uint64_t pack(bool own, uint64_t offset, uint64_t len) {
  return (own ? kOwnBit : 0) | (offset << 24) | len;
}

inline bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f' || c == '\n';
}

std::string_view strip_underscore(std::string_view s) {
  if (!s.empty() && s.front() == '_') s.remove_prefix(1);
  return s;
}

bool iequals_prefix(std::string_view s, std::string_view prefix) {
  if (s.size() < prefix.size()) return false;
  for (size_t i = 0; i < prefix.size(); ++i) {
    char c = s[i];
    if (c >= 'A' && c <= 'Z') c = char(c - 'A' + 'a');
    if (c != prefix[i]) return false;
  }
  return true;
}

bool parse_double(std::string_view s, double& out) {
  const char* b = s.data();
  const char* e = b + s.size();
  if (b != e && *b == '+') ++b;
  if (b == e) return false;
  auto r = std::from_chars(b, e, out);
  return r.ec == std::errc() && r.ptr == e;
}

std::string printable(std::string_view s) {
  std::string out;
  size_t n = std::min<size_t>(s.size(), 60);
  for (size_t i = 0; i < n; ++i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 32 || c >= 127) out += fmt::format("\\x{:02x}", c);
    else out += char(c);
  }
  if (s.size() > n) out += "...";
  return out;
}

}  // namespace

// ------------------------------------------------------------------ Table

Table::Table(bool is_loop) : is_loop_(is_loop), rows_(is_loop ? 0 : 1) {}

std::vector<std::string> Table::labels() const {
  std::vector<std::string> out;
  out.reserve(cols_.size());
  for (const auto& c : cols_) out.push_back(c.label);
  return out;
}

int Table::column(std::string_view label) const {
  label = strip_underscore(label);
  for (size_t i = 0; i < cols_.size(); ++i)
    if (cols_[i].label == label) return int(i);
  return -1;
}

const std::string& Table::source_name() const {
  static const std::string empty;
  return source_ ? source_->name : empty;
}

std::string Table::where(size_t row) const {
  const std::string& file = source_name();
  size_t ln = line(row);
  std::string block = "data_" + block_name_;
  if (!file.empty() && ln > 0) return fmt::format("{}:{}: {}", file, ln, block);
  if (!file.empty()) return fmt::format("{}: {}", file, block);
  return block;
}

int Table::require_column(std::string_view label) const {
  int c = column(label);
  if (c < 0) {
    const std::string& file = source_name();
    std::string at = file.empty() ? std::string()
                                   : (header_line_ ? fmt::format("{}:{}: ", file, header_line_)
                                                   : file + ": ");
    input_error("{}data_{} has no _{} {}", at, block_name_, strip_underscore(label),
                is_loop_ ? "column" : "item");
  }
  return c;
}

std::string_view Table::text(uint64_t cell) const {
  size_t len = size_t(cell & kMaxLen);
  size_t off = size_t((cell & ~kOwnBit) >> 24);
  if (cell & kOwnBit) return std::string_view(own_.data() + off, len);
  return std::string_view(source_->text.data() + off, len);
}

std::string_view Table::value(size_t row, int col) const {
  assert(col >= 0 && size_t(col) < cols_.size() && row < rows_);
  return text(cols_[size_t(col)].cells[row]);
}

double Table::number(size_t row, int col) const {
  std::string_view s = value(row, col);
  double v;
  if (!parse_double(s, v))
    input_error("{}: _{}: expected a number, got '{}' (row {})", where(row), label(col),
                printable(s), row + 1);
  return v;
}

long Table::integer(size_t row, int col) const {
  std::string_view s = value(row, col);
  double v;
  if (!parse_double(s, v) || !(std::fabs(v) < 9.0e15) || v != std::floor(v))
    input_error("{}: _{}: expected an integer, got '{}' (row {})", where(row), label(col),
                printable(s), row + 1);
  return long(v);
}

std::vector<double> Table::numbers(int col) const {
  std::vector<double> out(rows_);
  for (size_t r = 0; r < rows_; ++r) {
    std::string_view s = value(r, col);
    if (!parse_double(s, out[r])) number(r, col);  // throws with the message
  }
  return out;
}

bool Table::is_number(size_t row, int col) const {
  double v;
  return parse_double(value(row, col), v);
}

size_t Table::width(int col) const {
  size_t w = 0;
  for (uint64_t c : cols_[size_t(col)].cells) w = std::max<size_t>(w, size_t(c & kMaxLen));
  return w;
}

uint64_t Table::store(std::string_view v) {
  if (v.size() > kMaxLen) runtime_error("STAR value of {} bytes is too long", v.size());
  uint64_t off = own_.size();
  if (off + v.size() > kMaxOffset) runtime_error("STAR table text exceeds 512 GB");
  own_.append(v);
  return pack(true, off, v.size());
}

int Table::add_column(std::string_view label) {
  int c = column(label);
  if (c >= 0) return c;
  Column col;
  col.label = std::string(strip_underscore(label));
  col.cells.assign(rows_, pack(true, 0, 0));
  cols_.push_back(std::move(col));
  return int(cols_.size() - 1);
}

void Table::remove_column(std::string_view label) {
  int c = column(label);
  if (c >= 0) cols_.erase(cols_.begin() + c);
}

void Table::set_value(size_t row, int col, std::string_view v) {
  assert(col >= 0 && size_t(col) < cols_.size() && row < rows_);
  cols_[size_t(col)].cells[row] = store(v);
}

void Table::set_number(size_t row, int col, double v) {
  char buf[64];
  auto end = fmt::format_to_n(buf, sizeof buf, "{}", v).out;
  set_value(row, col, std::string_view(buf, size_t(end - buf)));
}

void Table::set_column(std::string_view label, const std::vector<std::string>& values) {
  if (values.size() != rows_)
    runtime_error("set_column _{}: {} values for {} rows", strip_underscore(label), values.size(),
                  rows_);
  int c = add_column(label);
  for (size_t r = 0; r < rows_; ++r) set_value(r, c, values[r]);
}

void Table::set_column(std::string_view label, const std::vector<double>& values) {
  if (values.size() != rows_)
    runtime_error("set_column _{}: {} values for {} rows", strip_underscore(label), values.size(),
                  rows_);
  int c = add_column(label);
  for (size_t r = 0; r < rows_; ++r) {
    // Keep the original text when it already reads as this exact number.
    double old;
    if (parse_double(value(r, c), old) && (old == values[r] || (std::isnan(old) && std::isnan(values[r]))))
      continue;
    set_number(r, c, values[r]);
  }
}

void Table::set_column(std::string_view label, const std::vector<int>& values) {
  if (values.size() != rows_)
    runtime_error("set_column _{}: {} values for {} rows", strip_underscore(label), values.size(),
                  rows_);
  int c = add_column(label);
  for (size_t r = 0; r < rows_; ++r) {
    double old;
    if (parse_double(value(r, c), old) && old == double(values[r])) continue;
    char buf[16];
    auto res = std::to_chars(buf, buf + sizeof buf, values[r]);
    set_value(r, c, std::string_view(buf, size_t(res.ptr - buf)));
  }
}

size_t Table::add_row() {
  if (!is_loop_) runtime_error("add_row on a key-value block data_{}", block_name_);
  for (auto& c : cols_) c.cells.push_back(pack(true, 0, 0));
  if (!row_line_.empty()) row_line_.push_back(0);
  return rows_++;
}

void Table::select_rows(const std::vector<size_t>& keep) {
  for (size_t k : keep)
    if (k >= rows_) runtime_error("select_rows: row {} of {}", k, rows_);
  for (auto& c : cols_) {
    std::vector<uint64_t> cells(keep.size());
    for (size_t i = 0; i < keep.size(); ++i) cells[i] = c.cells[keep[i]];
    c.cells.swap(cells);
  }
  if (!row_line_.empty()) {
    std::vector<uint32_t> lines(keep.size());
    for (size_t i = 0; i < keep.size(); ++i) lines[i] = row_line_[keep[i]];
    row_line_.swap(lines);
  }
  rows_ = keep.size();
}

std::string_view Table::get(std::string_view key, std::string_view fallback) const {
  int c = column(key);
  if (c < 0 || rows_ == 0) return fallback;
  return value(0, c);
}

void Table::set(std::string_view key, std::string_view v) {
  if (rows_ == 0) add_row();
  set_value(0, add_column(key), v);
}

// ------------------------------------------------------------------ Block / Document

Block::Block(std::string n, bool is_loop) : Table(is_loop), name(std::move(n)) {
  block_name_ = name;
}

void Block::set_name(std::string n) {
  name = std::move(n);
  block_name_ = name;
  for (auto& t : more) t.block_name_ = name;
}

Table* Block::table_with(std::string_view label) {
  if (has(label)) return this;
  for (auto& t : more)
    if (t.has(label)) return &t;
  return nullptr;
}

const Table* Block::table_with(std::string_view label) const {
  return const_cast<Block*>(this)->table_with(label);
}

Block* Document::find(std::string_view name) {
  for (auto& b : blocks)
    if (b.name == name) return &b;
  return nullptr;
}

const Block* Document::find(std::string_view name) const {
  return const_cast<Document*>(this)->find(name);
}

Block& Document::require(std::string_view name) {
  if (Block* b = find(name)) return *b;
  std::string found;
  for (const auto& b : blocks) found += (found.empty() ? "data_" : ", data_") + b.name;
  input_error("{}: no block data_{} (found: {})", source.empty() ? "STAR document" : source, name,
              found.empty() ? "no blocks" : found);
}

const Block& Document::require(std::string_view name) const {
  return const_cast<Document*>(this)->require(name);
}

Block& Document::add_block(std::string name, bool is_loop) {
  blocks.emplace_back(std::move(name), is_loop);
  return blocks.back();
}

// ------------------------------------------------------------------ parser

class Parser {
 public:
  explicit Parser(std::shared_ptr<Source> src) : src_(std::move(src)) {}

  Document run() {
    Document doc;
    doc.source = src_->name;
    const char* base = src_->text.data();
    const char* p = base;
    const char* end = base + src_->text.size();
    line_ = 0;
    while (p < end) {
      const char* nl = static_cast<const char*>(std::memchr(p, '\n', size_t(end - p)));
      const char* eol = nl ? nl : end;
      ++line_;
      if (line_ > std::numeric_limits<uint32_t>::max())
        fail("more than 4294967295 lines are not supported");
      process_line(doc, p, eol);
      p = nl ? nl + 1 : end;
    }
    finish_block(doc);
    if (doc.blocks.empty())
      input_error("{}: no data_ block found (empty or not a STAR file)", src_->name);
    return doc;
  }

 private:
  enum class State { None, Pairs, LoopHeader, LoopBody };

  template <class... Args>
  [[noreturn]] void fail(fmt::format_string<Args...> f, Args&&... args) {
    input_error("{}:{}: {}", src_->name, line_, fmt::format(f, std::forward<Args>(args)...));
  }

  // Reads one token starting at p (not whitespace, not a comment); returns its
  // text (without quotes) and advances p past it.
  std::string_view token(const char*& p, const char* eol) {
    char q = *p;
    if (q == '\'' || q == '"') {
      const char* s = p + 1;
      const char* c = s;
      for (;;) {
        c = static_cast<const char*>(std::memchr(c, q, size_t(eol - c)));
        if (!c) fail("unterminated {} quote", q == '\'' ? "single" : "double");
        if (c + 1 == eol || is_space(c[1])) break;
        ++c;
      }
      p = c + 1;
      return std::string_view(s, size_t(c - s));
    }
    const char* s = p;
    while (p < eol && !is_space(*p)) ++p;
    return std::string_view(s, size_t(p - s));
  }

  static void skip_space(const char*& p, const char* eol) {
    while (p < eol && is_space(*p)) ++p;
  }

  // After a keyword or label: only whitespace or a comment may follow.
  void expect_end(const char* p, const char* eol, std::string_view after) {
    skip_space(p, eol);
    if (p < eol && *p != '#')
      fail("unexpected '{}' after {}", printable(std::string_view(p, size_t(eol - p))), after);
  }

  uint64_t cell(std::string_view v) {
    if (v.size() > kMaxLen) fail("value of {} bytes is too long", v.size());
    return pack(false, uint64_t(v.data() - src_->text.data()), v.size());
  }

  void start_table(bool is_loop) {
    finish_table();
    current_ = Table(is_loop);
    current_.rows_ = 0;
    current_.source_ = src_;
    current_.block_name_ = block_name_;
    current_.header_line_ = line_;
    have_table_ = true;
  }

  void finish_table() {
    if (!have_table_) return;
    have_table_ = false;
    if (state_ == State::LoopHeader && current_.cols_.empty())
      input_error("{}:{}: loop_ with no labels", src_->name, current_.header_line_);
    if (current_.is_loop_) {
      for (auto& c : current_.cols_)
        if (c.cells.capacity() > c.cells.size() + c.cells.size() / 4) c.cells.shrink_to_fit();
      if (current_.row_line_.capacity() > current_.row_line_.size() + current_.row_line_.size() / 4)
        current_.row_line_.shrink_to_fit();
    }
    tables_.push_back(std::move(current_));
    current_ = Table();
  }

  void finish_block(Document& doc) {
    finish_table();
    if (!in_block_) return;
    in_block_ = false;
    Block b;
    b.name = block_name_;
    b.block_name_ = block_name_;
    b.comments = std::move(block_comments_);
    block_comments_.clear();
    size_t primary = 0;
    for (size_t i = 0; i < tables_.size(); ++i)
      if (tables_[i].is_loop_) {
        primary = i;
        break;
      }
    if (tables_.empty()) {
      b.is_loop_ = false;
      b.rows_ = 1;
      b.source_ = src_;
      b.header_line_ = block_line_;
    } else {
      static_cast<Table&>(b) = std::move(tables_[primary]);
      for (size_t i = 0; i < tables_.size(); ++i)
        if (i != primary) b.more.push_back(std::move(tables_[i]));
      b.primary_position = primary;
    }
    tables_.clear();
    doc.blocks.push_back(std::move(b));
    state_ = State::None;
  }

  void process_line(Document& doc, const char* p, const char* eol) {
    skip_space(p, eol);
    if (p == eol) return;  // blank line
    char c = *p;
    if (c == '#') {
      std::string_view com(p, size_t(eol - p));
      while (!com.empty() && is_space(com.back())) com.remove_suffix(1);
      pending_comments_.emplace_back(com);
      return;
    }
    if (state_ == State::LoopBody && c != '_' && !is_keyword_start(c)) {
      loop_row(p, eol);
      return;
    }
    if (is_keyword_start(c)) {
      const char* t = p;
      std::string_view word = token(t, eol);
      if (iequals_prefix(word, "data_")) {
        finish_block(doc);
        pending_to_block();
        in_block_ = true;
        block_name_ = std::string(word.substr(5));
        block_line_ = line_;
        state_ = State::Pairs;
        expect_end(t, eol, "data_" + block_name_);
        return;
      }
      if (iequals_prefix(word, "loop_") && word.size() == 5) {
        pending_comments_.clear();
        if (!in_block_) fail("loop_ before any data_ block");
        start_table(true);
        state_ = State::LoopHeader;
        expect_end(t, eol, "loop_");
        return;
      }
      if ((iequals_prefix(word, "stop_") || iequals_prefix(word, "global_")) &&
          (word.size() == 5 || word.size() == 7)) {
        pending_comments_.clear();
        if (state_ == State::LoopHeader) finish_table();
        if (state_ == State::LoopHeader || state_ == State::LoopBody) state_ = State::Pairs;
        return;
      }
      if (iequals_prefix(word, "save_")) fail("save frames are not supported");
    }
    if (c != '_' && c != ';') {
      value_line(p, eol);
      return;
    }
    pending_comments_.clear();
    if (c == ';') fail("multi-line ';' text fields are not supported");
    // A label.
    if (!in_block_) fail("label before any data_ block");
    const char* t = p;
    std::string_view lab = token(t, eol);
    lab.remove_prefix(1);
    if (lab.empty()) fail("empty label '_'");
    if (state_ == State::LoopHeader) {
      if (current_.column(lab) >= 0) fail("duplicate label _{}", lab);
      current_.cols_.push_back(Table::Column{std::string(lab), {}});
      expect_end(t, eol, "label _" + std::string(lab) + " in a loop_ header");
      return;
    }
    // A key-value pair.
    if (state_ != State::Pairs || !have_table_) {
      if (state_ == State::LoopBody) finish_table();
      state_ = State::Pairs;
      start_table(false);
      current_.rows_ = 1;
      current_.row_line_.clear();
    }
    skip_space(t, eol);
    if (t == eol || *t == '#') fail("label _{} has no value (expected '_label value')", lab);
    std::string_view v = token(t, eol);
    expect_end(t, eol, "the value of _" + std::string(lab));
    if (current_.column(lab) >= 0) fail("duplicate label _{}", lab);
    current_.cols_.push_back(Table::Column{std::string(lab), {cell(v)}});
    if (current_.row_line_.empty()) current_.row_line_.push_back(uint32_t(line_));
  }

  static bool is_keyword_start(char c) {
    switch (c) {
      case 'd': case 'D': case 'l': case 'L': case 's': case 'S': case 'g': case 'G':
      case '_': case ';':
        return true;
      default:
        return false;
    }
  }

  void pending_to_block() {
    block_comments_ = std::move(pending_comments_);
    pending_comments_.clear();
  }

  // A line of values outside a loop body.
  void value_line(const char* p, const char* eol) {
    pending_comments_.clear();
    switch (state_) {
      case State::None:
        fail("value '{}' before any data_ block", printable(first_token(p, eol)));
      case State::Pairs:
        fail("value '{}' without a label", printable(first_token(p, eol)));
      case State::LoopHeader:
        if (current_.cols_.empty()) fail("loop_ with no labels");
        state_ = State::LoopBody;
        loop_row(p, eol);
        return;
      case State::LoopBody:
        loop_row(p, eol);
        return;
    }
  }

  std::string_view first_token(const char* p, const char* eol) {
    const char* s = p;
    while (p < eol && !is_space(*p)) ++p;
    return std::string_view(s, size_t(p - s));
  }

  void loop_row(const char* p, const char* eol) {
    if (!pending_comments_.empty()) pending_comments_.clear();
    auto& cols = current_.cols_;
    const size_t ncol = cols.size();
    size_t n = 0;
    const char* row_start = p;
    for (;;) {
      skip_space(p, eol);
      if (p == eol || *p == '#') break;
      std::string_view v = token(p, eol);
      if (n < ncol) cols[n].cells.push_back(cell(v));
      ++n;
    }
    if (n != ncol) {
      for (size_t i = 0; i < std::min(n, ncol); ++i) cols[i].cells.pop_back();
      fail("data_{}: expected {} values (one per label), got {}", block_name_, ncol, n);
    }
    current_.row_line_.push_back(uint32_t(line_));
    ++current_.rows_;
    if (current_.rows_ == 1024) {
      // A long loop: reserve for the rest of the file at this row length.
      size_t row_len = size_t(eol - row_start) + 1;
      size_t remaining = src_->text.size() - size_t(eol - src_->text.data());
      size_t estimate = current_.rows_ + remaining / std::max<size_t>(row_len, 1) + 16;
      for (auto& c : cols) c.cells.reserve(estimate);
      current_.row_line_.reserve(estimate);
    }
  }

  std::shared_ptr<Source> src_;
  size_t line_ = 0;
  State state_ = State::None;
  bool in_block_ = false;
  bool have_table_ = false;
  std::string block_name_;
  size_t block_line_ = 0;
  Table current_;
  std::vector<Table> tables_;
  std::vector<std::string> pending_comments_, block_comments_;
};

Document parse(std::string_view text, const std::string& name_for_errors) {
  auto src = std::make_shared<Source>();
  src->name = name_for_errors;
  src->text.assign(text);
  return Parser(std::move(src)).run();
}

Document read(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) input_error("{}: file not found", path);
  if (std::filesystem::is_directory(path, ec)) input_error("{}: is a directory, expected a STAR file", path);
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) input_error("{}: cannot open: {}", path, std::strerror(errno));
  auto src = std::make_shared<Source>();
  src->name = path;
  std::fseek(f, 0, SEEK_END);
  long size = std::ftell(f);
  std::fseek(f, 0, SEEK_SET);
  if (size < 0) {
    std::fclose(f);
    input_error("{}: cannot determine the file size", path);
  }
  src->text.resize(size_t(size));
  size_t got = size ? std::fread(src->text.data(), 1, size_t(size), f) : 0;
  std::fclose(f);
  if (got != size_t(size)) input_error("{}: read {} of {} bytes", path, got, size);
  if (size == 0) input_error("{}: empty file, expected a STAR file", path);
  return Parser(std::move(src)).run();
}

// ------------------------------------------------------------------ writer

namespace {

bool needs_quote(std::string_view v) {
  if (v.empty()) return true;
  char c = v.front();
  // RELION's vectors ("[0.1,-2,0]", e.g. rlnOddZernike) are written bare, as RELION writes them.
  if (c == '[' && v.back() == ']' && v.find_first_of(" \t'\"") == std::string_view::npos) return false;
  if (c == '\'' || c == '"' || c == '_' || c == '#' || c == '$' || c == ';' || c == '[' ||
      c == ']')
    return true;
  for (char ch : v)
    if (is_space(ch)) return true;
  if (c == 'd' || c == 'D' || c == 'l' || c == 'L' || c == 's' || c == 'S' || c == 'g' ||
      c == 'G')
    return iequals_prefix(v, "data_") || iequals_prefix(v, "loop_") ||
           iequals_prefix(v, "save_") || iequals_prefix(v, "stop_") ||
           iequals_prefix(v, "global_");
  return false;
}

// True when `q` can delimit v: no q inside v is followed by whitespace.
bool can_quote_with(std::string_view v, char q) {
  for (size_t i = 0; i + 1 < v.size(); ++i)
    if (v[i] == q && is_space(v[i + 1])) return false;
  return true;
}

// Output buffer flushed to a file (or kept as a string).
class Out {
 public:
  explicit Out(AtomicFile* file) : file_(file) { buf_.reserve(file ? (1 << 22) + 4096 : 4096); }
  void put(std::string_view s) {
    buf_.append(s);
    maybe_flush();
  }
  void put(char c) { buf_.push_back(c); }
  void pad(size_t n) { buf_.append(n, ' '); }
  void maybe_flush() {
    if (file_ && buf_.size() >= (1 << 22)) flush();
  }
  void flush() {
    if (file_) {
      file_->write(buf_);
      buf_.clear();
    }
  }
  std::string take() { return std::move(buf_); }

 private:
  AtomicFile* file_;
  std::string buf_;
};

size_t quoted_size(std::string_view v) { return needs_quote(v) ? v.size() + 2 : v.size(); }

void put_value(Out& out, std::string_view v, size_t width, bool right) {
  bool q = needs_quote(v);
  size_t n = v.size() + (q ? 2 : 0);
  if (right && n < width) out.pad(width - n);
  if (q) {
    for (char ch : v)
      if (ch == '\n' || ch == '\r')
        input_error("cannot write a STAR value containing a line break: '{}'", printable(v));
    char qc = can_quote_with(v, '"') ? '"' : '\'';
    if (!can_quote_with(v, qc))
      input_error("cannot write STAR value '{}': it needs both quote kinds", printable(v));
    out.put(qc);
    out.put(v);
    out.put(qc);
  } else {
    out.put(v);
  }
  if (!right && n < width) out.pad(width - n);
}

void write_table(Out& out, const Table& t) {
  if (t.columns() == 0) return;
  int ncol = int(t.columns());
  if (t.is_loop()) {
    out.put("loop_\n");
    for (int c = 0; c < ncol; ++c) out.put(fmt::format("_{} #{}\n", t.label(c), c + 1));
    std::vector<size_t> width(size_t(ncol), 0);
    for (int c = 0; c < ncol; ++c)
      for (size_t r = 0; r < t.rows(); ++r)
        width[size_t(c)] = std::max(width[size_t(c)], quoted_size(t.value(r, c)));
    for (size_t r = 0; r < t.rows(); ++r) {
      for (int c = 0; c < ncol; ++c) {
        if (c) out.put(' ');
        // Numbers right-aligned, text left-aligned (like RELION).
        std::string_view v = t.value(r, c);
        bool right = !v.empty() && (std::isdigit(static_cast<unsigned char>(v.front())) ||
                                    v.front() == '-' || v.front() == '+' || v.front() == '.');
        put_value(out, v, c + 1 == ncol && !right ? 0 : width[size_t(c)], right);
      }
      out.put('\n');
      out.maybe_flush();
    }
  } else {
    size_t lw = 0;
    for (int c = 0; c < ncol; ++c) lw = std::max(lw, t.label(c).size());
    for (int c = 0; c < ncol; ++c) {
      out.put('_');
      out.put(t.label(c));
      out.pad(lw - t.label(c).size() + 4);
      put_value(out, t.rows() ? t.value(0, c) : std::string_view(), 0, false);
      out.put('\n');
    }
  }
  out.put('\n');
}

void write_document(Out& out, const Document& doc) {
  for (const auto& b : doc.blocks) {
    for (const auto& c : b.comments) {
      if (c.empty() || c.front() != '#') continue;
      out.put(c);
      out.put('\n');
    }
    if (!b.comments.empty()) out.put('\n');
    out.put("data_");
    out.put(b.name);
    out.put("\n\n");
    size_t before = std::min(b.primary_position, b.more.size());
    for (size_t i = 0; i < before; ++i) write_table(out, b.more[i]);
    write_table(out, b);
    for (size_t i = before; i < b.more.size(); ++i) write_table(out, b.more[i]);
    out.put('\n');
  }
}

}  // namespace

std::string quote_if_needed(std::string_view v) {
  Out out(nullptr);
  put_value(out, v, 0, false);
  return out.take();
}

std::string to_string(const Document& doc) {
  Out out(nullptr);
  write_document(out, doc);
  return out.take();
}

void write(const std::string& path, const Document& doc) {
  AtomicFile file(path);
  Out out(&file);
  write_document(out, doc);
  out.flush();
  file.commit();
}

std::string describe(const Document& doc) {
  std::string s;
  auto table_line = [&](const Table& t, const std::string& prefix) {
    if (t.is_loop())
      s += fmt::format("{}loop, {} row{}, {} column{}\n", prefix, t.rows(), t.rows() == 1 ? "" : "s",
                       t.columns(), t.columns() == 1 ? "" : "s");
    else
      s += fmt::format("{}pairs, {} item{}\n", prefix, t.columns(), t.columns() == 1 ? "" : "s");
    std::string line = "    ";
    for (size_t c = 0; c < t.columns(); ++c) {
      std::string item = "_" + t.label(int(c));
      if (!t.is_loop() && t.rows()) item += " = " + quote_if_needed(t.value(0, int(c)));
      if (line.size() > 4 && line.size() + item.size() + 1 > 100) {
        s += line + "\n";
        line = "    ";
      }
      if (line.size() > 4) line += t.is_loop() ? " " : ", ";
      line += item;
    }
    if (line.size() > 4) s += line + "\n";
  };
  s += fmt::format("{} block{}\n", doc.blocks.size(), doc.blocks.size() == 1 ? "" : "s");
  for (const auto& b : doc.blocks) {
    table_line(b, fmt::format("  data_{}: ", b.name));
    for (const auto& t : b.more) table_line(t, "    + ");
  }
  return s;
}

}  // namespace regula::star
