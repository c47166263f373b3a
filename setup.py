"""Build the optional C kernel (calmerge.merge.fastpath._fastlinear); the rest is in pyproject.toml.

`optional=True`: without a C compiler the install still succeeds and calmerge merges with the
numpy kernel (same bits, slower).
"""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class BuildExt(build_ext):
    """Strict IEEE fp32: no contraction into FMAs the code did not ask for, no fast-math."""

    def build_extensions(self) -> None:
        if self.compiler.compiler_type == "msvc":
            flags = ["/O2", "/fp:precise"]
        else:
            flags = ["-O3", "-ffp-contract=off", "-fno-fast-math", "-fno-math-errno",
                     "-fno-trapping-math"]
        for ext in self.extensions:
            ext.extra_compile_args = flags
        super().build_extensions()


setup(
    ext_modules=[
        Extension(
            "calmerge.merge.fastpath._fastlinear",
            ["src/calmerge/merge/fastpath/_fastlinear.c"],
            optional=True,
        )
    ],
    cmdclass={"build_ext": BuildExt},
)
