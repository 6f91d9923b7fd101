// Error policy (see docs/development.md):
//  * InputError: bad user input (a file, option or value): the message names the
//    file or option, the place (line, byte offset, image index) and what was expected.
//  * Error: I/O and runtime failures, carrying the path where there is one.
//  * Expected numerical outcomes are statuses returned to the caller, not exceptions.
//  * Bugs are asserts.
// Library code never calls exit() and never prints; only src/regula/cli turns these
// into messages and exit status 1.
#pragma once
#include <stdexcept>
#include <string>

#include <fmt/format.h>

namespace regula {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class InputError : public Error {
 public:
  using Error::Error;
};

// Throw an InputError with a fmt-formatted message.
template <class... Args>
[[noreturn]] void input_error(fmt::format_string<Args...> f, Args&&... args) {
  throw InputError(fmt::format(f, std::forward<Args>(args)...));
}

template <class... Args>
[[noreturn]] void runtime_error(fmt::format_string<Args...> f, Args&&... args) {
  throw Error(fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace regula
