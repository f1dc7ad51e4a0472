// A word diff of an answer and its edit, for showing them side by side: each side as runs of
// [text, changed].  Free of the DOM, like console-api.js, so it runs under Node too.

const LIMIT = 1500; // words a side; past that the table would be large and slow: no marks

const words = (text) => text.match(/\s+|[^\s]+/g) || [];

function runs(tokens, changed) {
  const out = [];
  tokens.forEach((token, i) => {
    const last = out[out.length - 1];
    if (last && last[1] === changed[i]) last[0] += token;
    else out.push([token, changed[i]]);
  });
  return out;
}

// { original: [[text, removed]...], edited: [[text, added]...] }, by the longest common
// subsequence of words (whitespace kept as it was).
export function wordDiff(original, edited) {
  const a = words(original || "");
  const b = words(edited || "");
  if (a.length > LIMIT || b.length > LIMIT) {
    return { original: [[original || "", false]], edited: [[edited || "", false]], marked: false };
  }
  const lcs = Array.from({ length: a.length + 1 }, () => new Uint16Array(b.length + 1));
  for (let i = a.length - 1; i >= 0; i -= 1) {
    for (let j = b.length - 1; j >= 0; j -= 1) {
      lcs[i][j] = a[i] === b[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
    }
  }
  const removed = a.map(() => true);
  const added = b.map(() => true);
  let i = 0;
  let j = 0;
  while (i < a.length && j < b.length) {
    if (a[i] === b[j]) {
      removed[i] = false;
      added[j] = false;
      i += 1;
      j += 1;
    } else if (lcs[i + 1][j] >= lcs[i][j + 1]) i += 1;
    else j += 1;
  }
  // Whitespace is never marked on its own: a changed space says nothing to a reader.
  a.forEach((token, k) => { if (!token.trim()) removed[k] = false; });
  b.forEach((token, k) => { if (!token.trim()) added[k] = false; });
  return { original: runs(a, removed), edited: runs(b, added), marked: true };
}
