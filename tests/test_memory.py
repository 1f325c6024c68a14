"""lvae.memory.reuse_freed_memory: a second large tensor reuses the first one's pages (no page faults)."""
import subprocess
import sys

import pytest

SCRIPT = '''
import resource, sys, torch
from lvae.memory import reuse_freed_memory
applied = reuse_freed_memory() if sys.argv[1] == 'reuse' else None
faults = []
for _ in range(2):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(64 << 20, dtype=torch.uint8).fill_(1)   # 64 MB, written, then freed
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(applied, faults[1])
'''


def second_allocation_faults(mode):
    out = subprocess.run([sys.executable, '-c', SCRIPT, mode], capture_output=True, text=True, check=True).stdout
    applied, faults = out.split()
    return applied, int(faults)


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc mallopt: Linux only')
def test_freed_memory_is_reused_without_page_faults():
    _, default_faults = second_allocation_faults('default')
    applied, reuse_faults = second_allocation_faults('reuse')
    assert applied == 'True'
    assert default_faults >= 32           # 64 MB faulted in again: 16,384 pages of 4 KB (32 huge pages)
    assert reuse_faults * 10 < default_faults
