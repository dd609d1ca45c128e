/* The measured region for bench_callgrind.py, called through ctypes. Callgrind runs with
 * `--instr-atstart=no --collect-atstart=no`: imports, client set-up and warm-up run uninstrumented
 * (near native speed); `otel_tokens_bench_measured` switches instrumentation on, turns event
 * collection on exactly around the Python callback that makes the measured SDK calls, and off again.
 * Outside valgrind the client requests are no-ops. */
#include <valgrind/callgrind.h>

int otel_tokens_bench_measured(int (*measured)(void)) {
    int result;
    CALLGRIND_START_INSTRUMENTATION;
    CALLGRIND_TOGGLE_COLLECT;
    result = measured();
    CALLGRIND_TOGGLE_COLLECT;
    CALLGRIND_STOP_INSTRUMENTATION;
    return result;
}
