"""VASP file and stream formats for the interactive session: INCAR/KPOINTS/stdin records out, results in.

Pure functions and small incremental readers, no processes: the session (vasp.py) does the I/O timing.
Readers never return a previous ionic step's numbers: step k is the k-th `<calculation>` of vasprun.xml
or the k-th ionic block of OUTCAR, and an incomplete block reads as "not there yet" (None).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

#: INCAR keys the interactive protocol needs, whatever the user asked for (as in ulissigroup/vasp-interactive).
FORCED_INCAR: dict[str, Any] = {
    "INTERACTIVE": True,  # read positions from stdin after each ionic step
    "IBRION": -1,  # VASP does not move the ions itself
    "POTIM": 0.0,
    "IWAVPR": 11,  # extrapolate wavefunctions (and charge) to the new positions: the warm start
    "ISYM": 0,  # symmetry found at the first geometry need not hold for the next ones
    "EDIFFG": 0,  # no ionic stopping criterion: only STOPCAR or NSW end the run
}
#: NSW is forced to at least this: VASP ends the interactive run after NSW ionic steps.
MIN_NSW = 10000

PROMPT_POSITIONS = "positions"  # classic: "POSITIONS: reading from stdin"
PROMPT_POSCAR = "positions_and_lattice"  # VASP 6.4.1+ with ISIF >= 3: "POSITIONS AND LATTICE: reading from stdin"

_SCF_LINE = re.compile(r"^\s*(DAV|RMM|CG|SDA|EDD|DMP|DIA|GRA):\s*\d+")


def classify_prompt(line: str) -> str | None:
    """Which stdin record VASP is asking for on this stdout line, or None if it is not a prompt.

    The echo that follows our input ("... read from stdin") is not a prompt.
    """
    text = line.strip().upper()
    if "READING FROM STDIN" not in text:
        return None
    if "POSITIONS AND LATTICE" in text:
        return PROMPT_POSCAR
    if "POSITIONS" in text:
        return PROMPT_POSITIONS
    return None


def is_scf_line(line: str) -> bool:
    """True for one electronic-step line of VASP's stdout (`DAV:   3 ...`, `RMM:  12 ...`)."""
    return bool(_SCF_LINE.match(line))


# ----------------------------------------------------------------------------------------------- inputs


def interactive_incar(user: Mapping[str, Any] | None) -> tuple[dict[str, Any], list[str]]:
    """The user's INCAR settings (keys upper-cased) with the interactive keys forced.

    Returns (settings, overridden) where `overridden` names the user keys that were replaced.
    """
    settings = {str(k).upper(): v for k, v in (user or {}).items()}
    overridden = [k for k, v in FORCED_INCAR.items() if k in settings and not _same_value(settings[k], v)]
    settings.update(FORCED_INCAR)
    nsw = settings.get("NSW")
    if nsw is not None:
        try:
            nsw = int(float(nsw))
        except (TypeError, ValueError):
            raise ValueError(f"INCAR NSW must be an integer, got {settings['NSW']!r}") from None
    if nsw is None or nsw < MIN_NSW:
        if nsw is not None:
            overridden.append("NSW")
        settings["NSW"] = MIN_NSW
    return settings, overridden


#: INCAR tags with one value per species (POSCAR order) -> the value for a species a mapping leaves out
#: (None: every species must be named).
PER_SPECIES_INCAR: dict[str, Any] = {"LDAUL": -1, "LDAUU": 0.0, "LDAUJ": 0.0, "RWIGS": None, "ROPT": None,
                                     "POMASS": None, "ZVAL": None, "VCA": 1.0}
#: INCAR tags with one value per atom that may be given per species (a mapping) or as one number for all atoms.
PER_ATOM_INCAR: dict[str, Any] = {"MAGMOM": 0.0}

def _is_symbol(name: Any) -> bool:
    from ase.data import chemical_symbols

    return isinstance(name, str) and name in chemical_symbols[1:]


def ml_force_field_problem(user: Mapping[str, Any] | None) -> str | None:
    """Why INCAR `user` cannot be used because it turns on VASP's machine-learned force field (one line), or None.

    With ML_LMLFF, VASP 6.4 writes force-field steps in another OUTCAR layout (`free  energy ML TOTEN`,
    `TOTAL-FORCE (eV/Angst) (ML)`; vasp-interactive #47) and its vasprun.xml outside the <calculation> hierarchy,
    which this reader does not take for a step's answer; the answers would also be a force field's, not DFT's.
    """
    for key, value in (user or {}).items():
        if str(key).upper() != "ML_LMLFF":
            continue
        on = value if isinstance(value, bool) else str(value).strip().strip(".").upper() in ("T", "TRUE")
        if on:
            return ("INCAR ML_LMLFF: VASP's machine-learned force field is not supported as the parent (its OUTCAR "
                    "layout, 'free  energy ML TOTEN', is not read, and its answers are a force field's, not DFT's); "
                    "remove ML_LMLFF and the other ML_* tags")
    return None


def per_species_problem(user: Mapping[str, Any] | None) -> str | None:
    """Why the per-species INCAR tags of `user` cannot be used (one line), or None.

    They must be a mapping by element ({Ni: 6.0}); MAGMOM may also be one number for every atom. A list
    or VASP's own string form is refused: it would apply by position to each POSCAR's own species order.
    """
    for key, value in (user or {}).items():
        tag = str(key).upper()
        if tag not in PER_SPECIES_INCAR and tag not in PER_ATOM_INCAR:
            continue
        if tag in PER_ATOM_INCAR and isinstance(value, (int, float)) and not isinstance(value, bool):
            continue
        how = (f"give a mapping by element, e.g. {tag}: {{Ni: {6.0 if tag == 'LDAUU' else 2 if tag == 'LDAUL' else 1.0}}}"
               f" (written in each POSCAR's species order")
        how += ", species not named get 0)" if tag in PER_ATOM_INCAR else (
            f", species not named get {PER_SPECIES_INCAR[tag]})" if PER_SPECIES_INCAR[tag] is not None
            else ", every species must be named)")
        if not isinstance(value, Mapping):
            return (f"INCAR {tag}: {value!r} would apply by position, and each system's POSCAR orders its species "
                    f"differently; {how}")
        wrong = [k for k in value if not _is_symbol(k)]
        if wrong:
            return f"INCAR {tag}: {', '.join(map(repr, wrong))} is not an element symbol; {how}"
    return None


def species_incar(settings: Mapping[str, Any], blocks: Sequence[tuple[str, int]]) -> dict[str, Any]:
    """`settings` with per-species mappings written as VASP wants them for this POSCAR's `blocks`.

    Per-species tags get one value per species in POSCAR order; MAGMOM one per atom ("n*value" per species).
    Raises ValueError (one line) for a form per_species_problem refuses or a species a tag must name but does not.
    """
    problem = per_species_problem(settings)
    if problem is not None:
        raise ValueError(problem)
    out = dict(settings)
    for key, value in settings.items():
        tag = str(key).upper()
        if tag in PER_SPECIES_INCAR:
            default = PER_SPECIES_INCAR[tag]
            missing = [s for s, _ in blocks if s not in value and default is None]
            if missing:
                raise ValueError(f"INCAR {tag}: no value for {', '.join(missing)} (every species must be named)")
            out[key] = [value.get(s, default) for s, _ in blocks]
        elif tag in PER_ATOM_INCAR and isinstance(value, Mapping):
            default = PER_ATOM_INCAR[tag]
            out[key] = " ".join(f"{n}*{_incar_value(float(value.get(s, default)))}" for s, n in blocks)
    return out


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(b, bool) or isinstance(a, bool):
        return _incar_value(a) == _incar_value(b)
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a).strip().upper() == str(b).strip().upper()


def _incar_value(value: Any) -> str:
    if isinstance(value, bool):
        return ".TRUE." if value else ".FALSE."
    if isinstance(value, str):
        low = value.strip().lower()
        if low in (".true.", "true", "t"):
            return ".TRUE."
        if low in (".false.", "false", "f"):
            return ".FALSE."
        return value
    if isinstance(value, (list, tuple, np.ndarray)):
        return " ".join(_incar_value(v) for v in value)
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    return str(value)


def format_incar(settings: Mapping[str, Any]) -> str:
    """INCAR text, one `KEY = value` a line (booleans as .TRUE./.FALSE., lists space-separated, None left out)."""
    lines = ["# written by finetuna-parsl (VASP interactive session)"]
    lines += [f"{key.upper()} = {_incar_value(value)}" for key, value in settings.items() if value is not None]
    return "\n".join(lines) + "\n"


def format_kpoints(kpts: Sequence[int] | None, gamma: bool = True) -> str:
    """KPOINTS text for an automatic mesh (default: the Gamma point only)."""
    mesh = (1, 1, 1) if kpts is None else tuple(int(k) for k in kpts)
    if len(mesh) != 3 or min(mesh) < 1:
        raise ValueError(f"kpts must be three positive integers, got {kpts!r}")
    style = "Gamma" if gamma else "Monkhorst-Pack"
    return f"k-point mesh written by finetuna-parsl\n0\n{style}\n{mesh[0]} {mesh[1]} {mesh[2]}\n0 0 0\n"


def species_order(symbols: Sequence[str]) -> list[int]:
    """VASP order of the atoms: grouped by species, species in order of first appearance, stable inside.

    The same rule as ASE's Vasp calculator (`_make_sort` without special setups), so a POTCAR built for
    `species_blocks(...)` matches. result[i] is the caller's index of VASP's atom i.
    """
    seen: list[str] = []
    for s in symbols:
        if s not in seen:
            seen.append(s)
    return [i for s in seen for i, t in enumerate(symbols) if t == s]


def species_blocks(symbols_in_vasp_order: Sequence[str]) -> list[tuple[str, int]]:
    """(symbol, count) for each consecutive run: the POSCAR species/counts lines."""
    blocks: list[tuple[str, int]] = []
    for s in symbols_in_vasp_order:
        if blocks and blocks[-1][0] == s:
            blocks[-1] = (s, blocks[-1][1] + 1)
        else:
            blocks.append((s, 1))
    return blocks


#: POTCAR folder below VASP_PP_PATH for each functional, as ASE lays them out.
POTCAR_FOLDERS = {"PBE": "potpaw_PBE", "LDA": "potpaw", "PW91": "potpaw_GGA"}


def potcar_files(species: Sequence[str], root: str | Path, xc: str = "PBE",
                 setups: Mapping[str, str] | None = None) -> list[Path]:
    """The POTCAR of each species (in POSCAR order) below `root`, laid out like ASE expects.

    `root/<folder>/<name>/POTCAR` with folder from POTCAR_FOLDERS[xc] and name the symbol plus its setup:
    a setup starting with "_" is a suffix ({"Cu": "_pv"} -> Cu_pv), any other is the full name.
    A missing file is a FileNotFoundError naming the path tried.
    """
    try:
        folder = Path(root) / POTCAR_FOLDERS[xc.upper()]
    except KeyError:
        raise ValueError(f"unknown POTCAR functional {xc!r}; known: {', '.join(POTCAR_FOLDERS)}") from None
    paths = []
    for symbol in species:
        setup = (setups or {}).get(symbol, "")
        name = symbol + setup if not setup or setup.startswith("_") else setup
        path = folder / name / "POTCAR"
        if not path.is_file():
            raise FileNotFoundError(f"no POTCAR for {symbol} at {path}")
        paths.append(path)
    return paths


def positions_record(scaled: np.ndarray) -> str:
    """The classic stdin record: one line of three fractional coordinates per atom (VASP order)."""
    return "".join(" ".join(f"{x:19.16f}" for x in row) + "\n" for row in np.asarray(scaled, dtype=float))


def poscar_record(cell: np.ndarray, blocks: Iterable[tuple[str, int]], scaled: np.ndarray) -> str:
    """The VASP 6.4.1+ record after `POSITIONS AND LATTICE: reading from stdin`: a POSCAR (VASP 5 layout).

    Title, scale 1.0, three lattice vectors, species line, counts line, `Direct`, fractional coordinates.
    """
    blocks = list(blocks)
    head = " ".join(s for s, _ in blocks) + "\n" + f"{1.0:19.16f}\n"
    lattice = "".join("  " + " ".join(f"{x:21.16f}" for x in vec) + "\n" for vec in np.asarray(cell, dtype=float))
    species = " ".join(s for s, _ in blocks) + "\n" + " ".join(str(n) for _, n in blocks) + "\n"
    return head + lattice + species + "Direct\n" + positions_record(scaled)


# ---------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class StepOutput:
    """One ionic step as VASP wrote it (atoms in VASP order)."""

    energy: float  # energy(sigma->0), what ASE's Vasp calculator reports as 'energy'
    free_energy: float  # free energy TOTEN, what the forces are the gradient of
    forces: np.ndarray  # (N, 3) eV/A, VASP order, unconstrained
    scf_cycles: int  # electronic steps in this ionic step
    source: str  # "vasprun.xml" or "OUTCAR"
    positions: np.ndarray | None = None  # (N, 3) Cartesian A, VASP order: where VASP says it computed this step


class _BlockCursor:
    """Finds the k-th block of a growing file without rereading what earlier steps consumed.

    `marker` starts (vasprun.xml) or ends (OUTCAR) each block; the cursor only moves past complete blocks.
    """

    def __init__(self, path: Path, marker: bytes) -> None:
        self.path = Path(path)
        self.marker = marker
        self.offset = 0  # bytes of the file before the block of step `passed + 1`
        self.passed = 0  # blocks wholly before `offset`

    def reset(self) -> None:
        self.offset = 0
        self.passed = 0

    def tail(self) -> bytes:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                return fh.read()
        except FileNotFoundError:
            return b""


class VasprunReader(_BlockCursor):
    """Step k = the k-th `<calculation>` of vasprun.xml, read only once it has forces and its energy block."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, b"<calculation>")

    def read(self, step: int, n_atoms: int) -> StepOutput | None:
        data = self.tail()
        pos = 0
        while self.passed < step - 1:  # skip past the start tags of earlier steps' calculations
            i = data.find(self.marker, pos)
            if i < 0:
                break
            pos = i + len(self.marker)
            self.passed += 1
        self.offset += pos  # commit: the next call starts after what was skipped
        if self.passed < step - 1:
            return None
        data = data[pos:]
        i = data.find(self.marker)
        if i < 0:
            return None
        end = data.find(b"</calculation>", i)
        following = data.find(self.marker, i + len(self.marker))  # a never-finished block ends where the next begins
        if following >= 0 and (end < 0 or following < end):
            end = following
        chunk = data[i : end if end >= 0 else len(data)].decode("utf-8", errors="replace")
        return parse_vasprun_calculation(chunk, n_atoms)


_VARRAY_FORCES = re.compile(r'<varray\s+name="forces"\s*>(.*?)</varray>', re.S)
_V_ROW = re.compile(r"<v>([^<]*)</v>")
_SCSTEP = re.compile(r"<scstep>.*?</scstep>", re.S)
_STRUCTURE = re.compile(r"<structure\s*>(.*?)</structure>", re.S)
_VARRAY_BASIS = re.compile(r'<varray\s+name="basis"\s*>(.*?)</varray>', re.S)
_VARRAY_POSITIONS = re.compile(r'<varray\s+name="positions"\s*>(.*?)</varray>', re.S)
_ENERGY_BLOCK = re.compile(r"<energy>(.*?)</energy>", re.S)


def _varray(block: str, pattern: re.Pattern, rows: int) -> np.ndarray | None:
    """The (rows, 3) numbers of one named <varray>, or None when absent or incomplete."""
    m = pattern.search(block)
    if m is None:
        return None
    values = _V_ROW.findall(m.group(1))
    if len(values) != rows:
        return None
    try:
        array = np.array([[float(x) for x in v.split()] for v in values], dtype=float)
    except ValueError:  # VASP writes ***** on overflow
        return None
    return array if array.shape == (rows, 3) else None


def _structure_positions(chunk: str, n_atoms: int) -> np.ndarray | None:
    """Cartesian positions of the calculation's <structure> (fractional positions times its basis)."""
    m = _STRUCTURE.search(chunk)
    if m is None:
        return None
    basis = _varray(m.group(1), _VARRAY_BASIS, 3)
    scaled = _varray(m.group(1), _VARRAY_POSITIONS, n_atoms)
    return None if basis is None or scaled is None else scaled @ basis


def _named(block: str, name: str) -> float | None:
    m = re.search(rf'<i\s+name="{name}"\s*>\s*([^<\s]+)\s*</i>', block)
    if m is None:
        return None
    try:
        return float(m.group(1))
    except ValueError:  # VASP writes ***** on overflow
        return None


def parse_vasprun_calculation(chunk: str, n_atoms: int) -> StepOutput | None:
    """One `<calculation>` (possibly unterminated) -> StepOutput, or None while forces or energy are missing.

    Energy as in ASE's vasprun reader: the calculation's e_fr_energy plus (e_0 - e_fr) of the last SCF
    step, which sidesteps VASP writing a wrong e_0_energy at the calculation level.
    """
    forces = _varray(chunk, _VARRAY_FORCES, n_atoms)
    if forces is None:
        return None
    scsteps = _SCSTEP.findall(chunk)
    outside = _SCSTEP.sub("", chunk)  # what is left holds one <energy>: the calculation-level block
    calc_energy = None
    for m in _ENERGY_BLOCK.finditer(outside):
        calc_energy = m.group(1)
    if calc_energy is None:
        return None
    free = _named(calc_energy, "e_fr_energy")
    if free is None:
        return None
    energy = _named(calc_energy, "e_0_energy")
    if scsteps:
        last = _ENERGY_BLOCK.search(scsteps[-1])
        e0, efr = (_named(last.group(1), "e_0_energy"), _named(last.group(1), "e_fr_energy")) if last else (None, None)
        if e0 is not None and efr is not None:
            energy = free + (e0 - efr)
    if energy is None:
        return None
    return StepOutput(energy=energy, free_energy=free, forces=forces, scf_cycles=len(scsteps), source="vasprun.xml",
                      positions=_structure_positions(chunk, n_atoms))


class OutcarReader(_BlockCursor):
    """Step k = the OUTCAR text up to the k-th `energy  without entropy` line (the end of an ionic step)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, b"  energy  without entropy")

    def read(self, step: int, n_atoms: int) -> StepOutput | None:
        data = self.tail()
        pos = 0
        while self.passed < step - 1:  # skip past the ends of earlier ionic steps
            end = _line_end_after(data, self.marker, pos)
            if end is None:
                break
            pos = end
            self.passed += 1
        self.offset += pos
        if self.passed < step - 1:
            return None
        data = data[pos:]
        end = _line_end_after(data, self.marker, 0)
        if end is None:
            return None
        return parse_outcar_step(data[:end].decode("utf-8", errors="replace"), n_atoms)


def _line_end_after(data: bytes, marker: bytes, start: int) -> int | None:
    """Index just past the newline ending the first line holding `marker` at or after `start`."""
    i = data.find(marker, start)
    if i < 0:
        return None
    nl = data.find(b"\n", i)
    return None if nl < 0 else nl + 1


_ITERATION = re.compile(r"Iteration\s*(\d+)\s*\(\s*(\d+)\s*\)")  # "Iteration1000(   3)" has no space


def parse_outcar_step(text: str, n_atoms: int) -> StepOutput | None:
    """One ionic step's OUTCAR text -> StepOutput (same energy convention as ASE's OUTCAR reader)."""
    lines = text.splitlines()
    forces = positions = None
    free = None
    energy = None
    scf = 0
    for n, line in enumerate(lines):
        m = _ITERATION.search(line)
        if m and "-" in line:
            scf = max(scf, int(m.group(2)))
        elif "TOTAL-FORCE" in line:
            block = lines[n + 2 : n + 2 + n_atoms]
            try:
                rows = [[float(x) for x in row.split()[0:6]] for row in block]
            except ValueError:
                rows = []
            if len(rows) == n_atoms and all(len(r) == 6 for r in rows):
                table = np.array(rows, dtype=float)
                positions, forces = table[:, :3], table[:, 3:]
        elif line.lower().startswith("  free  energy   toten"):
            try:
                free = float(line.split()[-2])
            except (ValueError, IndexError):
                free = None
        elif line.startswith("  energy  without entropy"):
            try:
                energy = float(line.split()[-1])
            except (ValueError, IndexError):
                energy = None
    if forces is None or energy is None or free is None:
        return None
    return StepOutput(energy=energy, free_energy=free, forces=forces, scf_cycles=scf, source="OUTCAR",
                      positions=positions)


def max_displacement(a: np.ndarray, b: np.ndarray, cell: np.ndarray) -> float:
    """Largest minimum-image distance (A) between two position sets in a periodic cell (VASP may wrap)."""
    cell = np.asarray(cell, dtype=float)
    frac = (np.asarray(a, dtype=float) - np.asarray(b, dtype=float)) @ np.linalg.inv(cell)
    frac -= np.round(frac)
    return float(np.linalg.norm(frac @ cell, axis=1).max()) if len(frac) else 0.0
