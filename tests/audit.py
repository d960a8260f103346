"""``make audit``: pip-audit over the packages installed in kanin's environment.

pip-audit runs from an environment of its own (``.venv-audit``) and audits the
site-packages it is pointed at, so its own dependencies are not counted. Exit 0 when every
package was audited and none has a known vulnerability, 1 when one has (each is listed
with the fixed versions), 3 when packages could not be audited (the vulnerability service
did not answer, a package is unknown to it): an audit that did not happen is not a pass.
``--allow-incomplete`` turns that last case into a loud notice and exit 0.

    python tests/audit.py --pip-audit .venv-audit/bin/pip-audit --path SITE_PACKAGES
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pip-audit", required=True, help="the pip-audit executable")
    parser.add_argument("--path", required=True, help="site-packages to audit")
    parser.add_argument("--allow-incomplete", action="store_true")
    args = parser.parse_args()
    done = subprocess.run(
        [args.pip_audit, "--path", args.path, "--format", "json", "--progress-spinner", "off",
         "--skip-editable"],
        capture_output=True, text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        report = json.loads(done.stdout)
    except ValueError:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"audit: pip-audit failed (exit {done.returncode}): {last}", file=sys.stderr)
        return 3
    packages = report.get("dependencies", [])
    vulnerable = [p for p in packages if p.get("vulns")]
    skipped = [p for p in packages if "skip_reason" in p]
    for package in vulnerable:
        for vuln in package["vulns"]:
            fixes = ", ".join(vuln.get("fix_versions", [])) or "none yet"
            print(f"audit: {package['name']} {package['version']}: {vuln['id']} (fixed in {fixes})")
    audited = len(packages) - len(skipped)
    print(f"audit: {audited} of {len(packages)} packages audited, {len(vulnerable)} vulnerable")
    if vulnerable:
        return 1
    if skipped:
        reason = skipped[0]["skip_reason"]
        print(f"audit: INCOMPLETE, {len(skipped)} packages not audited, e.g. {reason}",
              file=sys.stderr)  # fmt: skip
        return 0 if args.allow_incomplete else 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
