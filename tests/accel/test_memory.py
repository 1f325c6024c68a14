"""lvae.accel.memory.reuse_freed_memory: large tensors come from the process heap (kept and reused when freed)
instead of a fresh mmap each (page-faulted in again at every use). The time this saves is measured in
benchmarks/HISTORY.md; here the allocation policy is checked."""
import subprocess
import sys

import pytest

SCRIPT = '''
import sys, torch
from lvae.accel.memory import reuse_freed_memory
applied = reuse_freed_memory() if sys.argv[1] == 'reuse' else None
ptr = torch.empty(64 << 20, dtype=torch.uint8).data_ptr()
heaps = [[int(x, 16) for x in line.split()[0].split('-')] for line in open('/proc/self/maps')
         if line.rstrip().endswith('[heap]')]
print(applied, any(lo <= ptr < hi for lo, hi in heaps))
'''


def allocation(mode):
    """(whether reuse_freed_memory applied, whether a 64 MB tensor lies in the [heap] mapping)"""
    out = subprocess.run([sys.executable, '-c', SCRIPT, mode], capture_output=True, text=True, check=True).stdout
    return tuple(out.split())


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc mallopt and /proc: Linux only')
def test_large_tensors_come_from_the_heap():
    assert allocation('default') == ('None', 'False')  # glibc's default: a separate mmap, unmapped when freed
    assert allocation('reuse') == ('True', 'True')


TRIM_SCRIPT = '''
import torch
from lvae.accel.memory import reuse_freed_memory
assert reuse_freed_memory()
def heap_end():
    return max(int(line.split()[0].split('-')[1], 16) for line in open('/proc/self/maps')
               if line.rstrip().endswith('[heap]'))
t = torch.empty(3 << 30, dtype=torch.uint8)  # 3 GB of address space, never touched
grown = heap_end()
del t
print(heap_end() >= grown)
'''


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc mallopt and /proc: Linux only')
def test_the_heap_is_not_trimmed_even_past_2_gb():
    """A freed top of the heap over 2 GB stays mapped (glibc's largest positive trim threshold would return it)."""
    out = subprocess.run([sys.executable, '-c', TRIM_SCRIPT], capture_output=True, text=True, check=True).stdout
    assert out.split() == ['True']
