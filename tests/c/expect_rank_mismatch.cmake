# Runs COMMAND (an mpirun line whose ranks are set up inconsistently) and passes when it exits
# non-zero, within the test's timeout, with every one of the RANKS ranks reporting the
# disagreement: a clear error everywhere, no hang.
#   cmake -DCOMMAND=<mpirun;...> -DRANKS=2 -P expect_rank_mismatch.cmake
execute_process(COMMAND ${COMMAND} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err
                TIMEOUT 50)
message("${out}${err}")
if(rc EQUAL 0)
  message(FATAL_ERROR "the ranks disagreed but the run exited 0")
endif()
if(NOT rc MATCHES "^[0-9]+$")
  message(FATAL_ERROR "the run did not exit by itself: ${rc}")
endif()
math(EXPR last "${RANKS} - 1")
foreach(rank RANGE ${last})
  if(NOT "${out}${err}" MATCHES "rank ${rank}: error: ranks disagree on layer [^\n]+")
    message(FATAL_ERROR "rank ${rank} did not report the disagreement")
  endif()
endforeach()
