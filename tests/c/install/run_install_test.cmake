# Installs grass into a fresh prefix inside the build tree, then builds and runs consumers of
# the installed package exactly as users would:
#   1. a CMake project with find_package(grass CONFIG REQUIRED) (C and C++ programs);
#   2. the same with a version requirement the package cannot meet, which must fail;
#   3. C and C++ programs compiled with `pkg-config --cflags --libs grass` and nothing else (pkg-config
#      must be installed: a missing pkg-config fails this test rather than skipping it), which
#      must start without LD_LIBRARY_PATH: the .pc file's Libs carry the runpath;
#   4. pkg-config again after moving the installed tree (the .pc file is relocatable).
# Every program runs with LD_LIBRARY_PATH unset, as a user's shell would have it.
#
# Variables: BUILD_DIR (the configured grass build), SOURCE_DIR (this directory), WORK_DIR,
# C_COMPILER, CXX_COMPILER, GENERATOR, GRASS_VERSION.

foreach(var BUILD_DIR SOURCE_DIR WORK_DIR C_COMPILER CXX_COMPILER GENERATOR GRASS_VERSION)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "run_install_test.cmake needs -D${var}=...")
  endif()
endforeach()

function(run)
  cmake_parse_arguments(R "MAY_FAIL" "RESULT;OUTPUT" "COMMAND;ENV" ${ARGN})
  list(JOIN R_COMMAND " " shown)
  message(STATUS "$ ${shown}")
  set(R_COMMAND ${CMAKE_COMMAND} -E env --unset=LD_LIBRARY_PATH ${R_ENV} ${R_COMMAND})
  execute_process(COMMAND ${R_COMMAND} RESULT_VARIABLE rc OUTPUT_VARIABLE out
                  ERROR_VARIABLE out)
  string(STRIP "${out}" out)
  if(NOT R_MAY_FAIL AND NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${shown}\n${out}")
  endif()
  if(out AND NOT R_MAY_FAIL)
    message(STATUS "${out}")
  endif()
  if(R_RESULT)
    set(${R_RESULT} ${rc} PARENT_SCOPE)
  endif()
  if(R_OUTPUT)
    set(${R_OUTPUT} "${out}" PARENT_SCOPE)
  endif()
endfunction()

file(REMOVE_RECURSE "${WORK_DIR}")
set(prefix "${WORK_DIR}/prefix")

# ---- install ---------------------------------------------------------------------------------
run(COMMAND ${CMAKE_COMMAND} --install "${BUILD_DIR}" --prefix "${prefix}")
foreach(f include/grass.h include/grass.hpp lib/libgrass.so lib/cmake/grass/grassConfig.cmake
          lib/cmake/grass/grassConfigVersion.cmake lib/pkgconfig/grass.pc)
  if(NOT EXISTS "${prefix}/${f}")
    file(GLOB_RECURSE installed RELATIVE "${prefix}" "${prefix}/*")
    list(JOIN installed "\n  " installed)
    message(FATAL_ERROR "${f} was not installed; the prefix holds:\n  ${installed}")
  endif()
endforeach()

# ---- find_package ----------------------------------------------------------------------------
set(consumer_build "${WORK_DIR}/consumer-build")
run(COMMAND ${CMAKE_COMMAND} -S "${SOURCE_DIR}/consumer" -B "${consumer_build}" -G "${GENERATOR}"
            "-DCMAKE_PREFIX_PATH=${prefix}" "-DCMAKE_C_COMPILER=${C_COMPILER}"
            "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}" "-DGRASS_REQUIRE_VERSION=${GRASS_VERSION}"
            "-DCMAKE_BUILD_TYPE=Release")
run(COMMAND ${CMAKE_COMMAND} --build "${consumer_build}")
run(COMMAND "${consumer_build}/consumer_cpp")
run(COMMAND "${consumer_build}/consumer_c")

# an incompatible version request must not be satisfied
run(COMMAND ${CMAKE_COMMAND} -S "${SOURCE_DIR}/consumer" -B "${WORK_DIR}/consumer-too-new"
            -G "${GENERATOR}" "-DCMAKE_PREFIX_PATH=${prefix}" "-DCMAKE_C_COMPILER=${C_COMPILER}"
            "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}" "-DGRASS_REQUIRE_VERSION=999.0"
    MAY_FAIL RESULT rc OUTPUT out)
if(rc EQUAL 0)
  message(FATAL_ERROR "find_package(grass 999.0) succeeded against grass ${GRASS_VERSION}")
endif()

# ---- pkg-config ------------------------------------------------------------------------------
find_program(PKG_CONFIG NAMES pkg-config pkgconf)
if(NOT PKG_CONFIG)
  message(FATAL_ERROR "pkg-config is not installed (apt-get install pkg-config): the pkg-config "
                      "half of this test cannot run")
endif()

function(pkg_config_consumers tree tag)
  set(env "PKG_CONFIG_PATH=${tree}/lib/pkgconfig")
  run(COMMAND ${PKG_CONFIG} --modversion grass ENV ${env} OUTPUT version)
  if(NOT version STREQUAL GRASS_VERSION)
    message(FATAL_ERROR "pkg-config says grass ${version}, expected ${GRASS_VERSION}")
  endif()
  run(COMMAND ${PKG_CONFIG} --cflags --libs grass ENV ${env} OUTPUT flags)
  separate_arguments(flags UNIX_COMMAND "${flags}")
  string(FIND "${flags}" "-Wl,-rpath," has_rpath)
  if(has_rpath EQUAL -1)
    message(FATAL_ERROR "pkg-config --libs grass carries no runpath (-Wl,-rpath,): ${flags}")
  endif()
  run(COMMAND ${C_COMPILER} -std=c11 -Wall -Wextra -Werror
              "-DGRASS_EXPECTED_VERSION=\"${GRASS_VERSION}\"" "${SOURCE_DIR}/consumer/main.c"
              ${flags} -o "${WORK_DIR}/pc_consumer_c_${tag}")
  run(COMMAND ${CXX_COMPILER} -std=c++17 -Wall -Wextra -Werror
              "-DGRASS_EXPECTED_VERSION=\"${GRASS_VERSION}\"" "${SOURCE_DIR}/consumer/main.cpp"
              ${flags} -o "${WORK_DIR}/pc_consumer_cpp_${tag}")
  run(COMMAND "${WORK_DIR}/pc_consumer_c_${tag}")
  run(COMMAND "${WORK_DIR}/pc_consumer_cpp_${tag}")
endfunction()

pkg_config_consumers("${prefix}" installed)
file(RENAME "${prefix}" "${WORK_DIR}/moved")
pkg_config_consumers("${WORK_DIR}/moved" moved)

message(STATUS "install test passed")
