#!/usr/bin/env bash
# Prints "cpu: MODEL; FLAGS": the CPU model and the SIMD flags rnmt's kernels choose
# between at run time, for the benchmarks to print beside their figures.
awk -F': ' '/^model name/ && !m {m = $2} /^flags/ && !f {f = $2}
  END {n = split(f, a, " "); s = ""
    for (i = 1; i <= n; i++) if (a[i] ~ /^(avx|avx2|fma|f16c|avx512f|avx512bw|avx512_vnni|avx512_bf16|amx_.*)$/) s = s " " a[i]
    print "cpu: " m ";" s}' /proc/cpuinfo
