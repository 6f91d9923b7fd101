// STAR files (the metadata format of RELION and friends): a document model,
// a fast reader and a writer.
//
// Model. A Document is a list of data blocks. A Block is a Table (its primary
// content: the first loop_ of the block, or its key-value pairs when it has no
// loop) plus, rarely, further tables that follow in the same block (Bsoft writes
// pairs and a loop in one block; generic STAR allows several loops). A Table is
// either a loop (any number of rows) or a set of key-value pairs, stored as a
// table with exactly one row and one column per key.
//
// Labels are stored WITHOUT the leading underscore ("rlnImageName"); every
// lookup accepts both spellings ("_rlnImageName" too). Block names are stored
// without "data_" ("particles"; "" for a bare "data_").
//
// Values are kept as the exact text of the file (quotes removed), so a
// read/write round trip keeps every column, including unknown ones, and the
// text of every number. Storage is one shared text buffer (the file) plus 8
// bytes per value; numbers are converted on demand with std::from_chars.
//
// Syntax accepted: comments from a '#' at the start of a token to the end of the
// line ("_rlnImageName #3" is a label and a comment); '...' and "..." quoted
// values (a quote closes only when followed by whitespace or the end of the line,
// as in CIF, so 'it's' is one value); labels with or without RELION's "#N";
// blank lines anywhere; "loop_", "stop_" (ignored), "global_" (ignored); LF or
// CRLF line ends; tabs. Each loop row is one line (as RELION writes and reads).
// Not supported (InputError): save frames and ';' multi-line text fields.
//
// Comments: the comment lines just before a "data_" line (e.g. "# version 30001")
// are kept with that block and written back; a block made in code gets
// "# version 30001", as RELION 3.1 writes. Other comments are dropped.
//
// Errors: InputError "<file>:<line>: <what>" for every syntax problem.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace regula::star {

// The text a table's values point into, with the name used in messages.
struct Source {
  std::string name;  // file name, for error messages
  std::string text;  // the whole file
};

class Table {
 public:
  Table() = default;
  // A new empty loop (is_loop = true) or pairs table (is_loop = false, one row).
  explicit Table(bool is_loop);

  bool is_loop() const { return is_loop_; }
  void set_loop(bool loop) { is_loop_ = loop; }
  size_t rows() const { return rows_; }
  size_t columns() const { return cols_.size(); }
  bool empty() const { return cols_.empty(); }

  // Label of column `col`, without the leading underscore.
  const std::string& label(int col) const { return cols_[size_t(col)].label; }
  std::vector<std::string> labels() const;
  // Index of the column with this label ("rlnX" or "_rlnX"), or -1.
  int column(std::string_view label) const;
  bool has(std::string_view label) const { return column(label) >= 0; }
  // Like column() but throws InputError "<file>:<line>: block data_X has no _label".
  int require_column(std::string_view label) const;

  // The text of a value (quotes removed). No bounds check beyond an assert.
  std::string_view value(size_t row, int col) const;
  // The value as a number; InputError "<file>:<line>: column _label: expected a
  // number, got 'text'" otherwise. Accepts a leading '+', "inf", "nan".
  double number(size_t row, int col) const;
  // The value as an integer (a number with no fractional part, e.g. "3" or "3.000000").
  long integer(size_t row, int col) const;
  // A whole column converted to numbers (errors as number()).
  std::vector<double> numbers(int col) const;
  // True when the value parses completely as a number.
  bool is_number(size_t row, int col) const;

  // Line of `row` in the source file (1-based; 0 for rows made in code).
  size_t line(size_t row) const { return row < row_line_.size() ? row_line_[row] : 0; }
  // Line of the table's header ("loop_" or first pair); 0 if made in code.
  size_t header_line() const { return header_line_; }
  // Name of the source file, or "" for a table made in code.
  const std::string& source_name() const;
  // "<file>:<line>" (or "<file>" / "<block>" when unknown) for messages about `row`.
  std::string where(size_t row) const;

  // ---- editing ----
  // Adds a column (values "") or returns the existing one with this label.
  int add_column(std::string_view label);
  void remove_column(std::string_view label);
  void set_value(size_t row, int col, std::string_view v);
  // Writes the shortest text that reads back as exactly `v`.
  void set_number(size_t row, int col, double v);
  // Sets a whole column (added if absent). `values.size()` must equal rows().
  void set_column(std::string_view label, const std::vector<std::string>& values);
  void set_column(std::string_view label, const std::vector<double>& values);
  void set_column(std::string_view label, const std::vector<int>& values);
  // Appends a row of empty values; returns its index. Pairs tables have one row.
  size_t add_row();
  // Keeps rows `keep` (in that order; indices may repeat).
  void select_rows(const std::vector<size_t>& keep);
  // Pairs tables: value of `key`, or `fallback` if absent; set adds the key.
  std::string_view get(std::string_view key, std::string_view fallback = {}) const;
  void set(std::string_view key, std::string_view value);

  // Maximum length of any value in column `col` (for aligned writing).
  size_t width(int col) const;

  // Internal: used by the parser.
  struct Column {
    std::string label;
    std::vector<uint64_t> cells;  // packed (arena bit, offset, length)
  };

 private:
  friend class Parser;
  friend struct Block;
  uint64_t store(std::string_view v);
  std::string_view text(uint64_t cell) const;

  bool is_loop_ = true;
  size_t rows_ = 0;
  std::vector<Column> cols_;
  std::vector<uint32_t> row_line_;
  size_t header_line_ = 0;
  std::string block_name_;                // for messages
  std::shared_ptr<const Source> source_;  // values read from the file
  std::string own_;                       // values set in code
};

struct Block : Table {
  Block() = default;
  Block(std::string name, bool is_loop);

  std::string name;  // without "data_"
  // Comment lines written before "data_" (verbatim, with '#').
  std::vector<std::string> comments{"# version 30001"};
  // Further tables of this block, rarely present. Written in file order: the
  // first `primary_position` of them before the primary table, the rest after.
  std::vector<Table> more;
  size_t primary_position = 0;

  void set_name(std::string n);
  // The table of this block (primary or further) that has `label`, or nullptr.
  Table* table_with(std::string_view label);
  const Table* table_with(std::string_view label) const;
};

struct Document {
  std::string source;  // file name, for messages ("" when made in code)
  std::vector<Block> blocks;

  // Block by name (without "data_"), or nullptr.
  Block* find(std::string_view name);
  const Block* find(std::string_view name) const;
  // Block by name or InputError "<file>: no block data_X (found: data_a, data_b)".
  Block& require(std::string_view name);
  const Block& require(std::string_view name) const;
  // Appends a new block (a loop when is_loop) and returns it.
  Block& add_block(std::string name, bool is_loop = true);
};

// Parse STAR text; `name_for_errors` names the source in messages.
Document parse(std::string_view text, const std::string& name_for_errors);
// Read a STAR file (InputError when missing, empty or malformed).
Document read(const std::string& path);
// The RELION-like text of a document: comments, "data_name", blank line, then
// "loop_" + "_label #N" lines + right-aligned rows, or "_label value" pairs.
// Values that are empty, contain whitespace or could be read as syntax are quoted.
std::string to_string(const Document& doc);
// Write a document atomically.
void write(const std::string& path, const Document& doc);

// Human-readable summary: one line per block (name, loop/pairs, rows, columns)
// followed by the column names.
std::string describe(const Document& doc);

// Quote `v` if needed so that it reads back as one value equal to `v`.
std::string quote_if_needed(std::string_view v);

}  // namespace regula::star
