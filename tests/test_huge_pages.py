"""The commands restart themselves once with glibc's huge-page tunable, keeping the user's tunables and pid."""
import os
import subprocess
import sys

import pytest

from calrec_jax import huge_pages

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUPPORTED = (sys.platform == "linux" and huge_pages.thp_mode() == "madvise"
             and (huge_pages.glibc_version() or (0, 0)) >= (2, 35))

# Prints its pid, restarts through reexec_with_huge_pages, then reports the pid, GLIBC_TUNABLES and how much of
# a freshly malloc'd and written 64 MiB buffer the kernel backs with huge pages.
CHILD = r"""
import ctypes, os, sys
sys.path.insert(0, {root!r})
if os.environ.get("FIRST_PID") is None:
  os.environ["FIRST_PID"] = str(os.getpid())
from calrec_jax.huge_pages import reexec_with_huge_pages
reexec_with_huge_pages()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
n = 64 << 20
buf = libc.malloc(n)
ctypes.memset(buf, 1, n)
huge = 0
with open("/proc/self/smaps_rollup") as f:
  for line in f:
    if line.startswith("AnonHugePages:"):
      huge = int(line.split()[1])
print(os.environ["FIRST_PID"], os.getpid(), os.environ.get("GLIBC_TUNABLES", ""), huge)
"""


def run_child(**env):
  out = subprocess.run([sys.executable, "-c", CHILD.format(root=ROOT)], capture_output=True, text=True, check=True,
                       env={k: v for k, v in {**os.environ, **env}.items() if v is not None})
  first, pid, tunables, huge_kib = out.stdout.split(" ")
  return int(first), int(pid), tunables, int(huge_kib)


@pytest.mark.parametrize("env, mode, glibc, expected", [
    ({}, "madvise", (2, 36), True),
    ({"CALREC_HUGE_PAGES": "0"}, "madvise", (2, 36), False),                   # the user's opt-out
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "madvise", (2, 36), False),  # the user's own choice
    ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, "madvise", (2, 36), True),
    ({}, "never", (2, 36), False),                                              # no THP in this kernel
    ({}, "always", (2, 36), False),                                             # malloc gets them already
    ({}, None, (2, 36), False),
    ({}, "madvise", (2, 34), False),                                            # glibc without the tunable
    ({}, "madvise", None, False),                                               # musl, macOS
])
def test_restarts_only_where_the_tunable_helps(env, mode, glibc, expected):
  assert huge_pages.should_reexec(env, mode, glibc) is expected


def test_keeps_the_users_tunables():
  assert huge_pages.tunables_with_huge_pages("") == "glibc.malloc.hugetlb=1"
  assert huge_pages.tunables_with_huge_pages("glibc.malloc.arena_max=2") == (
      "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1")


def test_thp_mode_reads_the_bracketed_mode(tmp_path):
  f = tmp_path / "enabled"
  f.write_text("always [madvise] never\n")
  assert huge_pages.thp_mode(str(f)) == "madvise"
  assert huge_pages.thp_mode(str(tmp_path / "missing")) is None


@pytest.mark.skipif(not SUPPORTED, reason="needs Linux, glibc >= 2.35 and transparent huge pages in madvise mode")
def test_process_restarts_with_huge_pages_for_malloc():
  first, pid, tunables, huge_kib = run_child(GLIBC_TUNABLES="glibc.malloc.arena_max=4", CALREC_HUGE_PAGES=None)
  assert pid == first                       # execve: same process, so launchers and signals still reach it
  assert tunables == "glibc.malloc.arena_max=4:glibc.malloc.hugetlb=1"
  assert huge_kib >= 2048                   # the 64 MiB buffer sits (at least partly) on 2 MiB pages

  first, pid, tunables, huge_kib = run_child(GLIBC_TUNABLES=None, CALREC_HUGE_PAGES="0")
  assert (pid, tunables, huge_kib) == (first, "", 0)
