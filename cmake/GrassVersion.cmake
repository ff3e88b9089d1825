# Reads the package version from Cargo.toml (the single source of truth) and the version and
# ABI macros from the generated include/grass.h. Sets GRASS_VERSION, GRASS_HEADER_VERSION and
# GRASS_ABI_VERSION in the caller's scope.

function(grass_read_versions source_dir)
  file(READ "${source_dir}/Cargo.toml" cargo)
  # The first `version = "..."` line belongs to [package], which Cargo.toml opens with.
  string(REGEX MATCH "\nversion[ \t]*=[ \t]*\"([0-9]+\\.[0-9]+\\.[0-9]+)[^\"]*\"" _ "\n${cargo}")
  if(NOT CMAKE_MATCH_1)
    message(FATAL_ERROR "grass: no package version found in ${source_dir}/Cargo.toml")
  endif()
  set(GRASS_VERSION "${CMAKE_MATCH_1}" PARENT_SCOPE)

  file(READ "${source_dir}/include/grass.h" header)
  foreach(part MAJOR MINOR PATCH)
    string(REGEX MATCH "#define GRASS_VERSION_${part} ([0-9]+)" _ "${header}")
    set(${part} "${CMAKE_MATCH_1}")
  endforeach()
  set(GRASS_HEADER_VERSION "${MAJOR}.${MINOR}.${PATCH}" PARENT_SCOPE)
  string(REGEX MATCH "#define GRASS_ABI_VERSION ([0-9]+)" _ "${header}")
  set(GRASS_ABI_VERSION "${CMAKE_MATCH_1}" PARENT_SCOPE)
endfunction()
