#!/usr/bin/env python3
"""A stand-in for VASP in interactive mode: VASP's input files, stdout prompts, stdin records and output formats, EMT inside.

Reads INCAR/POSCAR/KPOINTS (and checks POTCAR's species order when there is one) in its working directory,
refuses to run unless INTERACTIVE = .TRUE. and IBRION = -1, then for each ionic step prints DAV/RMM lines
(fewer when the atoms barely moved: the warm start), appends an ionic block to OUTCAR and a <calculation>
to vasprun.xml in the layouts ASE's readers parse, and asks for the next positions on stdin. A STOPCAR with
LABORT = .TRUE. seen at the start of a step ends the run (exit 0); so does reaching NSW.

Energies: energy(sigma->0) is EMT's energy; TOTEN (free energy) is that minus a constant 0.002 eV, and the
calculation-level e_0_energy of vasprun.xml is wrong on purpose (VASP's bug, which readers must work around).

Misbehaviours for tests, from the environment:
  FAKE_VASP_VERSION             "6.4.2" (or any >= 6.4.1): ask "POSITIONS AND LATTICE: reading from stdin" and
                                read a POSCAR-like record; default "6.3.2" asks "POSITIONS: reading from stdin"
  FAKE_VASP_SLOW_START          seconds to sleep before printing anything
  FAKE_VASP_CRASH_AT            ionic step at which to die after half its SCF lines (exit 174, forrtl message)
  FAKE_VASP_HANG_AT             ionic step at which to go silent (sleep) after two SCF lines
  FAKE_VASP_TRUNCATE_XML_AT     ionic step whose vasprun.xml block is cut inside the forces and never finished
  FAKE_VASP_TRUNCATE_OUTCAR_AT  ionic step whose OUTCAR block is cut inside the force table and never finished
  FAKE_VASP_XML_LAG             "1": a step's vasprun.xml block is written only once the next positions arrive
  FAKE_VASP_NO_NEWLINE          "1": the prompt is printed without a trailing newline
  FAKE_VASP_SIGNAL_LOG          file that gets "<pid> TSTP" / "<pid> CONT" on those signals (TSTP then stops us)
  FAKE_VASP_SPIN                N: keep N cores busy like VASP's MPI ranks (they busy-poll while VASP waits on
                                stdin): N-1 forked "ranks" spin all the time, this process spins at the prompt;
                                SIGTSTP / SIGCONT to this process stop / continue the ranks too, as mpirun does
Like VASP it refuses an INCAR with fewer LDAUL/LDAUU/LDAUJ values than species (LDAU on) or fewer MAGMOM
values than atoms. It always writes its pid to fake_vasp.pid in the working directory.
"""

from __future__ import annotations

import atexit
import os
import re
import select
import signal
import sys
import time
from pathlib import Path

import numpy as np

TS = 0.002  # the fake electronic entropy term, eV: TOTEN = E(sigma->0) - TS
STEP_FORMAT = "   {step} F= {free:.8E} E0= {e0:.8E}  d E ={de:.6E}"


def env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None


def fail(message: str, code: int = 1) -> None:
    sys.stderr.write(f"fake VASP: {message}\n")
    sys.stderr.flush()
    sys.exit(code)


def say(line: str = "", end: str = "\n") -> None:
    sys.stdout.write(line + end)
    sys.stdout.flush()


# ------------------------------------------------------------------------------------------------ inputs


def read_incar(path: Path) -> dict[str, str]:
    settings: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = re.split(r"[#!]", raw, maxsplit=1)[0]
        for statement in line.split(";"):
            if "=" in statement:
                key, value = statement.split("=", 1)
                settings[key.strip().upper()] = value.strip()
    return settings


def is_true(value: str | None) -> bool:
    return value is not None and value.strip().upper().lstrip(".").startswith("T")


def potcar_species(path: Path) -> list[str]:
    return [m.group(1).split("_")[0] for m in re.finditer(r"TITEL\s*=\s*\S+\s+(\S+)", path.read_text())]


def blocks_of(symbols: list[str]) -> list[tuple[str, int]]:
    blocks: list[tuple[str, int]] = []
    for s in symbols:
        if blocks and blocks[-1][0] == s:
            blocks[-1] = (s, blocks[-1][1] + 1)
        else:
            blocks.append((s, 1))
    return blocks


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:3])


# ------------------------------------------------------------------------------------------------ output


class Outputs:
    """OUTCAR and vasprun.xml, appended and flushed step by step."""

    def __init__(self, atoms, blocks, kpts, nsw: int, version: str) -> None:
        self.n = len(atoms)
        self.cell = np.array(atoms.cell)
        self.outcar = open("OUTCAR", "w")
        self.xml = open("vasprun.xml", "w")
        self.pending_xml: tuple[str, bool] | None = None
        self.open_calculation = False
        self._outcar_header(blocks, kpts, version)
        self._xml_header(atoms, blocks, kpts, nsw, version)

    def _outcar_header(self, blocks, kpts, version) -> None:
        w = self.outcar.write
        w(f" vasp.{version} 18Apr23 (build Jan 01 2024 00:00:00) complex  (fake VASP: EMT inside)\n\n")
        for _ in range(2):  # VASP lists the POTCARs twice
            for symbol, _n in blocks:
                w(f" POTCAR:    PAW_PBE {symbol} 08Apr2002\n")
        w("\n   ISPIN  =      1    spin polarized calculation?\n")
        w("   ions per type =       " + "".join(f"{n:4d}" for _s, n in blocks) + "\n")
        w(f"   k-points           NKPTS =      1   k-points in BZ     NKDIM =      1   number of bands    NBANDS=     {4 * self.n}\n")
        w(f"   number of dos      NEDOS =    301   number of ions     NIONS =    {self.n:4d}\n\n")
        w(f" KPOINTS: Gamma mesh {kpts}\n\n k-points in reciprocal lattice and weights: K-points\n")
        w("   0.00000000  0.00000000  0.00000000       1.000\n\n")
        self.outcar.flush()

    def _xml_header(self, atoms, blocks, kpts, nsw, version) -> None:
        w = self.xml.write
        w('<?xml version="1.0" encoding="ISO-8859-1"?>\n<modeling>\n <generator>\n')
        w(f'  <i name="program" type="string">vasp </i>\n  <i name="version" type="string">{version} </i>\n </generator>\n')
        w(' <incar>\n  <i type="logical" name="INTERACTIVE"> T  </i>\n  <i type="int" name="IBRION">    -1</i>\n </incar>\n')
        w(' <kpoints>\n  <generation param="Gamma">\n')
        w(f'   <v type="int" name="divisions">{"".join(f"{k:9d}" for k in kpts)} </v>\n  </generation>\n')
        w('  <varray name="kpointlist" >\n   <v>       0.00000000       0.00000000       0.00000000 </v>\n  </varray>\n')
        w('  <varray name="weights" >\n   <v>       1.00000000 </v>\n  </varray>\n </kpoints>\n')
        w(f' <parameters>\n  <separator name="ionic" >\n   <i type="int" name="NSW">{nsw:7d}</i>\n   <i name="PSTRESS">      0.00000000</i>\n  </separator>\n </parameters>\n')
        w(f' <atominfo>\n  <atoms>{self.n:8d} </atoms>\n  <types>{len(blocks):8d} </types>\n')
        w('  <array name="atoms" >\n   <dimension dim="1">ion</dimension>\n   <field type="string">element</field>\n')
        w('   <field type="int">atomtype</field>\n   <set>\n')
        for t, (symbol, count) in enumerate(blocks, start=1):
            for _ in range(count):
                w(f"    <rc><c>{symbol:2s}</c><c>{t:4d}</c></rc>\n")
        w("   </set>\n  </array>\n </atominfo>\n")
        w(self._structure(atoms.get_scaled_positions(wrap=False), name="initialpos"))
        self.xml.flush()

    def _structure(self, scaled, name: str | None = None) -> str:
        head = f' <structure name="{name}" >\n' if name else "  <structure>\n"
        rows = "".join(f"    <v>{v[0]:17.8f}{v[1]:17.8f}{v[2]:17.8f} </v>\n" for v in self.cell)
        pos = "".join(f"    <v>{v[0]:17.8f}{v[1]:17.8f}{v[2]:17.8f} </v>\n" for v in scaled)
        return (head + '   <crystal>\n   <varray name="basis" >\n' + rows + "   </varray>\n"
                + f'   <i name="volume">{abs(np.linalg.det(self.cell)):17.8f} </i>\n   </crystal>\n'
                + '   <varray name="positions" >\n' + pos + "   </varray>\n" + ("  </structure>\n" if not name else " </structure>\n"))

    def scf_outcar(self, step: int, j: int, free: float, e0: float) -> None:
        w = self.outcar.write
        w(f"----------------------------------------- Iteration{step:7d}({j:4d})  ---------------------------------------\n\n")
        w("    POTLOK:  cpu time      0.0100: real time      0.0100\n\n")
        w("  Free energy of the ion-electron system (eV)\n  ---------------------------------------------------\n")
        w(f"  free energy    TOTEN  = {free:18.8f} eV\n\n  energy without entropy = {e0 + TS:18.8f}  energy(sigma->0) = {e0:18.8f}\n\n\n")

    def ionic_outcar(self, positions, forces, energy: float, truncate: bool) -> None:
        w = self.outcar.write
        w("------------------------ aborting loop because EDIFF is reached ----------------------------------------\n\n\n")
        w("  direct lattice vectors                 reciprocal lattice vectors\n")
        rec = np.linalg.inv(self.cell).T
        for a, b in zip(self.cell, rec):
            w(f"  {a[0]:12.9f} {a[1]:12.9f} {a[2]:12.9f}    {b[0]:12.9f} {b[1]:12.9f} {b[2]:12.9f}\n")
        w("\n POSITION                                       TOTAL-FORCE (eV/Angst)\n")
        w(" -----------------------------------------------------------------------------------\n")
        rows = [f" {p[0]:12.5f} {p[1]:12.5f} {p[2]:12.5f}   {f[0]:13.6f} {f[1]:13.6f} {f[2]:13.6f}\n"
                for p, f in zip(positions, forces)]
        if truncate:
            w("".join(rows[: max(1, len(rows) // 2)]))
            self.outcar.flush()
            return
        w("".join(rows))
        drift = forces.sum(axis=0)
        w(" -----------------------------------------------------------------------------------\n")
        w(f"    total drift:                             {drift[0]:13.6f} {drift[1]:13.6f} {drift[2]:13.6f}\n\n\n")
        w("--------------------------------------------------------------------------------------------------------\n\n\n\n")
        w("  FREE ENERGIE OF THE ION-ELECTRON SYSTEM (eV)\n  ---------------------------------------------------\n")
        w(f"  free  energy   TOTEN  = {energy - TS:18.8f} eV\n\n")
        w(f"  energy  without entropy= {energy + TS:18.8f}  energy(sigma->0) = {energy:18.8f}\n\n\n")
        self.outcar.flush()

    def calculation_xml(self, scaled, forces, energy: float, scf_energies: list[float], truncate: bool, lag: bool) -> None:
        parts = [" <calculation>\n"]
        for e0 in scf_energies:
            parts.append('  <scstep>\n   <time name="dav">    0.01    0.01</time>\n   <energy>\n')
            parts.append(f'    <i name="alphaZ">{12.3456:17.8f} </i>\n    <i name="e_fr_energy">{e0 - TS:17.8f} </i>\n')
            parts.append(f'    <i name="e_wo_entrp">{e0 + TS:17.8f} </i>\n    <i name="e_0_energy">{e0:17.8f} </i>\n   </energy>\n  </scstep>\n')
        parts.append(self._structure(scaled))
        rows = [f"   <v>{f[0]:17.8f}{f[1]:17.8f}{f[2]:17.8f} </v>\n" for f in forces]
        parts.append('  <varray name="forces" >\n')
        if truncate:
            parts.append("".join(rows[: max(1, len(rows) // 2)]))
            self._xml_write("".join(parts), lag)
            return
        parts.append("".join(rows) + "  </varray>\n")
        parts.append('  <varray name="stress" >\n' + "   <v>       0.00000000       0.00000000       0.00000000 </v>\n" * 3 + "  </varray>\n")
        # VASP's bug: the calculation-level e_0_energy is wrong (here: e_wo_entrp); readers use the last scstep's
        parts.append(f'  <energy>\n   <i name="e_fr_energy">{energy - TS:17.8f} </i>\n   <i name="e_wo_entrp">{energy + TS:17.8f} </i>\n')
        parts.append(f'   <i name="e_0_energy">{energy + TS:17.8f} </i>\n  </energy>\n  <time name="totalsc">    0.10    0.10</time>\n')
        self._xml_write("".join(parts), lag, close=True)

    def _xml_write(self, text: str, lag: bool, close: bool = False) -> None:
        """Write one calculation; its `</calculation>` (after the eigenvalues) follows only when the next step ends."""
        self._close_open()
        self.pending_xml = (text, close)
        if not lag:
            self.flush_pending()

    def _close_open(self) -> None:
        if self.open_calculation:
            self.xml.write("  <eigenvalues>\n  </eigenvalues>\n </calculation>\n")
            self.open_calculation = False

    def flush_pending(self) -> None:
        if self.pending_xml:
            text, close = self.pending_xml
            self.xml.write(text)
            self.open_calculation = close  # a truncated block is never finished
            self.pending_xml = None
        self.xml.flush()

    def finish(self, scaled) -> None:
        self.flush_pending()
        self._close_open()
        self.xml.write(self._structure(scaled, name="finalpos") + "</modeling>\n")
        self.xml.close()
        self.outcar.write("\n General timing and accounting informations for this job:\n ========================================================\n\n")
        self.outcar.write("                  Total CPU time used (sec):        0.100\n                            Elapsed time (sec):        0.100\n")
        self.outcar.close()


# ------------------------------------------------------------------------------------------------ stdin


def read_line() -> str:
    line = sys.stdin.readline()
    if not line:
        fail("stdin closed while waiting for positions", code=2)
    return line


def read_positions(atoms, blocks, lattice_record: bool) -> np.ndarray:
    """Scaled positions from stdin: N lines, or (6.4.1+) a POSCAR-like record whose lattice must not change."""
    n = len(atoms)
    if lattice_record:
        read_line()  # title
        scale = float(read_line().split()[0])
        lattice = np.array([[float(x) for x in read_line().split()[:3]] for _ in range(3)]) * scale
        species = read_line().split()
        counts = [int(x) for x in read_line().split()]
        if not np.allclose(lattice, atoms.cell, atol=1e-8) or list(zip(species, counts)) != blocks:
            fail(f"lattice or species on stdin differ from POSCAR: {species} {counts} {lattice.tolist()}", code=3)
        mode = read_line().strip()
        if mode[:1] in "sS":
            mode = read_line().strip()
        rows = [[float(x) for x in read_line().split()[:3]] for _ in range(n)]
        array = np.array(rows)
        return array @ np.linalg.inv(np.array(atoms.cell)) if mode[:1] in "cCkK" else array
    rows = []
    while len(rows) < n:
        line = read_line()
        if line.strip():
            rows.append([float(x) for x in line.split()[:3]])
    return np.array(rows)


# ------------------------------------------------------------------------------------------------ main


def spin(iterations: int = 20000) -> None:
    """Burn CPU for about a millisecond (an MPI rank busy-polling)."""
    for _ in range(iterations):
        pass


def start_spinning_ranks(n: int) -> list[int]:
    """Fork n - 1 "ranks" that spin until this process exits (they notice it through their parent pid)."""
    leader = os.getpid()
    ranks = []
    for _ in range(n - 1):
        pid = os.fork()
        if pid == 0:
            while os.getppid() == leader:
                spin()
            os._exit(0)
        ranks.append(pid)
    atexit.register(end_ranks, ranks)
    return ranks


def end_ranks(ranks: list[int]) -> None:
    for rank in ranks:
        try:
            os.kill(rank, signal.SIGKILL)
            os.waitpid(rank, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def wait_for_stdin_spinning() -> None:
    """Return once stdin has data, spinning meanwhile (rank 0 of a VASP waiting for positions)."""
    while not select.select([sys.stdin], [], [], 0)[0]:
        spin()


def install_signal_handlers(ranks: list[int]) -> None:
    """FAKE_VASP_SIGNAL_LOG logs TSTP/CONT; with ranks, TSTP stops them and CONT continues them (like mpirun)."""
    path = os.environ.get("FAKE_VASP_SIGNAL_LOG")
    if not path and not ranks:
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) if path else None

    def on_tstp(signum, frame):
        if fd is not None:
            os.write(fd, f"{os.getpid()} TSTP\n".encode())
        for rank in ranks:
            os.kill(rank, signal.SIGSTOP)
        os.kill(os.getpid(), signal.SIGSTOP)  # really stop, as VASP would

    def on_cont(signum, frame):
        for rank in ranks:
            os.kill(rank, signal.SIGCONT)
        if fd is not None:
            os.write(fd, f"{os.getpid()} CONT\n".encode())

    signal.signal(signal.SIGTSTP, on_tstp)
    signal.signal(signal.SIGCONT, on_cont)


def stop_requested() -> bool:
    path = Path("STOPCAR")
    if not path.exists():
        return False
    settings = read_incar(path)
    return is_true(settings.get("LABORT"))


def scf_count(step: int, moved: float) -> int:
    if step == 1:
        return 8
    if moved < 1e-6:
        return 2
    if moved < 0.02:
        return 4
    return 5 if moved < 0.1 else 7


def main() -> None:
    Path("fake_vasp.pid").write_text(f"{os.getpid()}\n")
    spinning = env_int("FAKE_VASP_SPIN") or 0
    install_signal_handlers(start_spinning_ranks(spinning) if spinning > 1 else [])
    slow = float(os.environ.get("FAKE_VASP_SLOW_START") or 0)
    if slow:
        time.sleep(slow)
    version = os.environ.get("FAKE_VASP_VERSION", "6.3.2")
    lattice_record = version_tuple(version) >= (6, 4, 1)
    crash_at, hang_at = env_int("FAKE_VASP_CRASH_AT"), env_int("FAKE_VASP_HANG_AT")
    cut_xml, cut_outcar = env_int("FAKE_VASP_TRUNCATE_XML_AT"), env_int("FAKE_VASP_TRUNCATE_OUTCAR_AT")
    lag = os.environ.get("FAKE_VASP_XML_LAG") == "1"
    prompt_end = "" if os.environ.get("FAKE_VASP_NO_NEWLINE") == "1" else "\n"

    say(" running on    1 total cores")
    say(f" vasp.{version} 18Apr23 (build Jan 01 2024 00:00:00) complex")
    for name in ("INCAR", "POSCAR"):
        if not Path(name).is_file():
            fail(f"no {name} in {os.getcwd()}")
    incar = read_incar(Path("INCAR"))
    if not is_true(incar.get("INTERACTIVE")):
        fail(f"INTERACTIVE is not .TRUE. (got {incar.get('INTERACTIVE')!r}): not an interactive run")
    if incar.get("IBRION", "").strip() != "-1":
        fail(f"interactive mode needs IBRION = -1, got {incar.get('IBRION')!r}")
    nsw = int(incar.get("NSW", "0") or 0)
    if not Path("KPOINTS").is_file() and "KSPACING" not in incar:
        fail("no KPOINTS and no KSPACING")
    kpts = [1, 1, 1]
    if Path("KPOINTS").is_file():
        kpts = [int(x) for x in Path("KPOINTS").read_text().splitlines()[3].split()[:3]]

    from ase.calculators.emt import EMT
    from ase.io import read

    atoms = read("POSCAR", format="vasp")
    atoms.set_constraint()
    blocks = blocks_of(atoms.get_chemical_symbols())
    if Path("POTCAR").is_file():
        species = potcar_species(Path("POTCAR"))
        if species != [s for s, _ in blocks]:
            fail(f"POTCAR species {species} do not match POSCAR species {[s for s, _ in blocks]}")
    for key in ("LDAUL", "LDAUU", "LDAUJ"):  # one value per species, as VASP reads them
        if is_true(incar.get("LDAU")) and key in incar and len(incar[key].split()) < len(blocks):
            fail(f"Error reading item '{key}' from file INCAR: {len(blocks)} species, got {incar[key]!r}")
    if "MAGMOM" in incar:  # one value per atom ("n*value" counts n)
        given = sum(int(t.split("*")[0]) if "*" in t else 1 for t in incar["MAGMOM"].split())
        if given < len(atoms):
            fail(f"Error reading item 'MAGMOM' from file INCAR: {len(atoms)} ions, got {given} values")
    say(f" POSCAR found :  {len(blocks)} types and {len(atoms):7d} ions")
    atoms.calc = EMT()
    out = Outputs(atoms, blocks, kpts, nsw, version)

    previous = None
    step = 0
    while True:
        if stop_requested():
            say(" LABORT found in STOPCAR: stopping the run")
            out.finish(atoms.get_scaled_positions(wrap=False))
            sys.exit(0)
        step += 1
        energy = float(atoms.get_potential_energy())
        forces = np.array(atoms.get_forces())
        moved = np.inf if previous is None else float(np.abs(atoms.positions - previous).max())
        n_scf = scf_count(step, moved)
        say("       N       E                     dE             d eps       ncg     rms          rms(c)")
        scf_energies = [energy + 0.5 ** j * 0.1 for j in range(n_scf - 1, 0, -1)] + [energy]
        for j, e in enumerate(scf_energies, start=1):
            if crash_at == step and j > n_scf // 2:
                sys.stderr.write("forrtl: severe (174): SIGSEGV, segmentation fault occurred\n")
                sys.stderr.write("Image              PC                Routine            Line        Source\n")
                sys.stderr.flush()
                os._exit(174)
            if hang_at == step and j > 2:
                time.sleep(3600)
            algo = "DAV" if j <= 2 else "RMM"
            say(f"{algo}: {j:3d}    {e - TS: .12E}   {-0.5 ** j: .5E}   {-0.1 * 0.5 ** j: .5E}   {8 * len(atoms):4d}   {0.3 * 0.5 ** j:.3E}")
            out.scf_outcar(step, j, e - TS, e)
        say(STEP_FORMAT.format(step=step, free=energy - TS, e0=energy, de=energy - TS))
        out.ionic_outcar(atoms.positions, forces, energy, truncate=cut_outcar == step)
        out.calculation_xml(atoms.get_scaled_positions(wrap=False), forces, energy, scf_energies,
                            truncate=cut_xml == step, lag=lag)
        if nsw and step >= nsw:
            out.finish(atoms.get_scaled_positions(wrap=False))
            sys.exit(0)
        say(" POSITIONS AND LATTICE: reading from stdin" if lattice_record else " POSITIONS: reading from stdin", end=prompt_end)
        if spinning:
            wait_for_stdin_spinning()  # the record is read whole after the prompt: nothing is left in stdin's buffer
        scaled = read_positions(atoms, blocks, lattice_record)
        say(" POSITIONS: read from stdin")
        previous = atoms.positions.copy()
        atoms.set_scaled_positions(scaled)
        out.flush_pending()


if __name__ == "__main__":
    main()
