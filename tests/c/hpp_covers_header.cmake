# Every function grass.h declares is wrapped by grass.hpp: fails with the list of the ones that
# are not, so that the C++ wrapper cannot fall behind the C ABI unnoticed.
#   cmake -DHEADER=include/grass.h -DWRAPPER=bindings/cpp/grass.hpp -P hpp_covers_header.cmake

file(READ "${HEADER}" header)
file(READ "${WRAPPER}" wrapper)
# declarations: a return type at the start of a line, then grass_<name>(
string(REGEX MATCHALL "\n[a-z_0-9 ]+[ *]+(grass_[a-z0-9_]+)\\(" decls "${header}")
# a function the header's own macros call (#define grass_x(a) grass_x_sized(a, ...)) is
# wrapped where the wrapper calls the macro
string(REGEX MATCHALL "#define grass_[a-z0-9_]+\\([a-z_, ]*\\) grass_[a-z0-9_]+\\(" macros "${header}")
set(count 0)
set(missing "")
foreach(decl IN LISTS decls)
  string(REGEX REPLACE ".*(grass_[a-z0-9_]+)\\($" "\\1" name "${decl}")
  math(EXPR count "${count} + 1")
  set(call "${name}(")
  foreach(macro IN LISTS macros)
    if(macro MATCHES "^#define (grass_[a-z0-9_]+)\\(.* ${name}\\($")
      set(call "${CMAKE_MATCH_1}(")
    endif()
  endforeach()
  string(FIND "${wrapper}" "${call}" at)
  if(at EQUAL -1)
    list(APPEND missing ${name})
  endif()
endforeach()
if(count LESS 40)
  message(FATAL_ERROR "found only ${count} function declarations in ${HEADER}: is the pattern stale?")
endif()
if(missing)
  list(JOIN missing "\n  " text)
  message(FATAL_ERROR "grass.hpp does not wrap these functions of grass.h:\n  ${text}")
endif()
message(STATUS "grass.hpp wraps all ${count} functions of grass.h")
