"""The energy per operation of the paper's estimate (docs/recipe.md section 6), defined here once.

The paper's 45 nm figures: a multiply-accumulate (MAC, a layer on real-valued input) costs 4.6 pJ, an accumulate
(AC, a layer on spikes) 0.9 pJ. Every default in ``energy`` and in ``scripts/energy_report.py`` is one of these two
names, so a change here reaches every report; ``--e-mac-pj`` / ``--e-ac-pj`` override them for one report.
"""
E_MAC_PJ = 4.6
E_AC_PJ = 0.9
