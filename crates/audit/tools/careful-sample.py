"""In-sample careful labelling of medium pairs (twenty-fifth round).
usage (from the directory holding the corpora and the runs): python3 careful-sample.py  writes c25/sample-{1,...,5}.tsv
Pairs and sizes fixed below; findings from the runs of main listed in RUNS; seeded shuffle per pair,
then the union is shuffled and dealt round-robin to three labellers.
Location: path relative to <corpus>/ (first column 'corpus' names the dir)."""
import json, random, collections
RUNS = {'heldout10': 'm24-heldout10', 'heldout11': 'm24-heldout11', 'heldout12': 'm24-heldout12',
        'heldout13': 'm24-heldout13', 'heldout14': 'm24-heldout14', 'heldout15': 'm24-heldout15',
        'heldout16': 'm24-heldout16', 'tuning10': 'm24-tuning10', 'heldout17': 's1-heldout17',
        'heldout18': 's1-heldout18'}
PAIRS = {('no-timeout', 'python'): 45, ('no-timeout', 'go'): 40, ('rename-without-fsync', 'cpp'): 35,
         ('rename-without-fsync', 'java'): 21}
pool = collections.defaultdict(list)
for corpus, run in RUNS.items():
    for f in json.load(open(f'{run}.json'))['findings']:
        k = (f['rule'], f['lang'])
        if k in PAIRS:
            p = f['path']
            if p.startswith(corpus + '/'):
                p = p[len(corpus) + 1:]
            pool[k].append((corpus, p, f['line'], f['rule'], f['lang'], f['message'].replace('\t', ' ').replace('\n', ' ')))
rng = random.Random('careful25')
rows = []
for k in sorted(PAIRS):
    fs = sorted(set(pool[k]))
    rng.shuffle(fs)
    rows += fs[:PAIRS[k]]
    print(k, min(len(fs), PAIRS[k]), 'of', len(fs))
rng.shuffle(rows)
for i in range(3):
    with open(f'c25/sample-{i+1}.tsv', 'w') as out:
        out.write('id\tcorpus\trule\tlanguage\tlocation\tlabel\treason\tmessage\n')
        for j, r in enumerate(rows[i::3]):
            out.write(f'c{i+1}-{j}\t{r[0]}\t{r[3]}\t{r[4]}\t{r[1]}:{r[2]}\t\t\t{r[5]}\n')
# Second reading: the same 140 rows, reshuffled (seed careful25-second) and dealt to two labellers.
rows2 = []
for i in range(3):
    rows2 += open(f'c25/sample-{i+1}.tsv').read().rstrip('\n').split('\n')[1:]
random.Random('careful25-second').shuffle(rows2)
for k, name in enumerate(('4', '5')):
    with open(f'c25/sample-{name}.tsv', 'w') as out:
        out.write('id\tcorpus\trule\tlanguage\tlocation\tlabel\treason\tmessage\n')
        out.write('\n'.join(rows2[k::2]) + '\n')
