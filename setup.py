"""Build hook for the one optional C extension; everything else is declared in pyproject.toml.

`otel_tokens._otlp_scan` (otel_tokens/_otlp_scan.c) is the compiled OTLP walk the collector uses
when it is there. It is `optional`: without a C compiler (or Python headers) the build prints a
warning and the install goes on, and the collector runs its pure-Python path with the same results.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "otel_tokens._otlp_scan",
            sources=["otel_tokens/_otlp_scan.c"],
            optional=True,
            extra_compile_args=["-O2", "-std=c99", "-Wall", "-Wno-missing-braces"],
        )
    ]
)
