#!/usr/bin/env python3
"""Re-tier a finished run with a catalog and score it against labels and hazards.

Usage: effect.py CATALOG.rs RUN.json LABELS.tsv HAZARDS.tsv

Gives each finding of RUN.json (`ftvm-audit --all --format json`) the tier that CATALOG.rs's
`TIERS`/`DROPPED` assign to its rule and language, then prints per tier the findings, the
labelled ones and their TPs (Wilson 95%), per medium/high pair the same, and the recall of the
hazards (HAZARDS.tsv: id, path:line) by tier: found when a finding of that tier or a higher
one is in the same file within 2 lines.
"""
import json,re,sys,collections
def tiers(cat):
    s=open(cat).read()
    ids=dict(re.findall(r'(\w+) = "([\w-]+)", \w+, \w+,',s))
    T={}
    tb=s[s.index("pub const TIERS"):]; tb=tb[:tb.index("];")]
    for r,l,t in re.findall(r'\((\w+), Lang::(\w+), Tier::(\w+)\)',tb): T[(ids[r],l.lower())]=t.lower()
    db=s[s.index("pub const DROPPED"):]; db=db[:db.index("];")]
    for r,l in re.findall(r'\(\s*(\w+),\s*Lang::(\w+),',db): T[(ids[r],l.lower())]="low"
    return T
T=tiers(sys.argv[1]); F=json.load(open(sys.argv[2]))["findings"]; labels=sys.argv[3]; haz=sys.argv[4]
tier=lambda r,l: T.get((r,l),"medium")
lab={}
for row in open(labels).read().splitlines()[1:]:
    c=row.split('\t'); p,ln=c[4].rsplit(':',1); lab[(p,int(ln),c[2])]=c[5]
cnt=collections.Counter(); tp=collections.Counter(); nl=collections.Counter(); pairs=collections.defaultdict(lambda:[0,0,0])
for f in F:
    t=tier(f["rule"],f["lang"]); cnt[t]+=1
    k=(f["path"],f["line"],f["rule"])
    if t!='low':
        pr=pairs[(t,f["lang"],f["rule"])]; pr[0]+=1
    if k in lab:
        nl[t]+=1; tp[t]+=lab[k]=='TP'
        if t!='low': pr[1]+=1; pr[2]+=lab[k]=='TP'
import math
def wil(k,n):
    if n==0: return (0,0)
    z=1.96;p=k/n;d=1+z*z/n;c=(p+z*z/(2*n))/d;h=z*math.sqrt(p*(1-p)/n+z*z/(4*n*n))/d;return (round(100*(c-h)),round(100*(c+h)))
for t in ['high','medium','low']: print(t, 'findings',cnt[t],'labelled',nl[t],'TP',tp[t], wil(tp[t],nl[t]) if t!='low' else '')
for k,v in sorted(pairs.items()): print(' ',k,'findings %d labelled %d TP %d'%tuple(v))
H=[l.split('\t') for l in open(haz).read().splitlines() if l.strip()]
res={"high":[],"hm":[],"all":[]}
for h in H:
    hid=h[0]; p,ln=h[1].rsplit(':',1); ln=int(ln)
    ts={tier(f["rule"],f["lang"]) for f in F if f["path"]==p and abs(f["line"]-ln)<=2}
    if "high" in ts: res["high"].append(hid)
    if ts & {"high","medium"}: res["hm"].append(hid)
    if ts: res["all"].append(hid)
print(len(H),{k:len(v) for k,v in res.items()}); print('h+m',res['hm'])
