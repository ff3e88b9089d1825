# examples/train_gpt2.c refuses bad command lines and files with exit 2 and one line that names
# the problem.
#
#   cmake -DTRAINER=<grass_train_gpt2> -DTEXT=<file> -DWORK_DIR=<dir> -P train_gpt2_bad_input.cmake
foreach(var TRAINER TEXT WORK_DIR)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "train_gpt2_bad_input.cmake: -D${var}=... is required")
  endif()
endforeach()
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})
file(WRITE ${WORK_DIR}/short.txt "too short")

# Each case: the expected message (a regex), "|", the arguments separated by ",".
set(small "--layers,1,--channels,32,--heads,2,--seq-len,16,--batch,2,--steps,2")
set(cases
  "no text file given|"
  "cannot open the text file '${WORK_DIR}/missing.txt'|${WORK_DIR}/missing.txt"
  "has 9 bytes: too short|${WORK_DIR}/short.txt"
  "--steps: expected an integer in \\[1, 100000000\\], got 'ten'|${TEXT},--steps,ten"
  "--lr: expected a number in \\[0, 10\\], got 'nan'|${TEXT},--lr,nan"
  "--optimizer: expected grass or adamw, got 'sgd'|${TEXT},--optimizer,sgd"
  "--channels 30 is not a multiple of --heads 4|${TEXT},--channels,30"
  "unknown option '--epochs'|${TEXT},--epochs,3"
  "--residual-scale: add --residual to use it|${TEXT},--residual-scale,0.2"
  "--residual: the full-rank residual is grass's|${TEXT},--optimizer,adamw,--residual"
  "--residual-scale: expected a number in \\[0, 1e\\+30\\], got '-1'|${TEXT},--residual,--residual-scale,-1"
  "--row-warmup: expected an integer in \\[0, 2147483647\\], got '-3'|${TEXT},--row-warmup,-3"
  "--batch needs a value|${TEXT},--batch"
  "--stop-at 5 is past --steps 2|${TEXT},${small},--stop-at,5"
  "--resume: cannot open '${WORK_DIR}/none.model'|${TEXT},${small},--resume,${WORK_DIR}/none"
  "grass_optimizer_create_sparse \\(qkvw\\[0\\], 96 x 32\\) failed: .*rank|${TEXT},${small},--rank,33"
)
foreach(case IN LISTS cases)
  string(FIND "${case}" "|" bar)
  string(SUBSTRING "${case}" 0 ${bar} expect)
  math(EXPR bar "${bar} + 1")
  string(SUBSTRING "${case}" ${bar} -1 args)
  string(REPLACE "," ";" parts "${args}")
  execute_process(COMMAND ${TRAINER} ${parts} RESULT_VARIABLE rc OUTPUT_VARIABLE out
                  ERROR_VARIABLE err)
  message("-- ${parts}: exit ${rc}: ${err}")
  string(STRIP "${err}" line)
  if(NOT rc EQUAL 2)
    message(FATAL_ERROR "exit ${rc}, expected 2, for: ${parts}")
  endif()
  if(NOT line MATCHES "${expect}")
    message(FATAL_ERROR "the message '${line}' does not match '${expect}'")
  endif()
  if(line MATCHES "\n")
    message(FATAL_ERROR "more than one line: ${line}")
  endif()
endforeach()
