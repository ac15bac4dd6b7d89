// The HTML report (src/html-report.ts) and its token view (src/token-view.ts, protocol v6
// `positions`): the builder on metrics made here from per-position numbers (escaping,
// the elements, the forest plot against the metrics' intervals, the token colours and
// hover titles against the positions), the config keys, the CLI on the fake worker and
// on the tiny models in token and byte space, and the page in headless Chromium when it
// is installed.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { ConfigError } from "../src/errors.js";
import { CSP, deltaColour, forestScale, htmlReport, niceTicks, segments } from "../src/html-report.js";
import { buildMetrics, type Metrics } from "../src/metrics.js";
import { writeRunOutputs } from "../src/outputs.js";
import { parseConfig, planRequest, type RunPlan } from "../src/plan.js";
import type { HelloMsg, LoadedMsg, Positions, ResultMsg } from "../src/protocol.js";
import { defaultViewSettings } from "../src/token-view.js";
import { FAKE_PYTHON, kotara, rng, tempDir, tinyModels, windowedSums, writeFile } from "./helpers.js";

const root = tempDir("kotara-html-");
after(() => rmSync(root, { recursive: true, force: true }));
/** A fresh directory under the suite's, removed with it. */
const subDir = (name: string) => mkdtempSync(join(root, `${name}-`));
const EVIL = `<script>alert("x")</script> & 'q'`;
// the text shown in the view: markup, an ampersand, 2-, 3- and 4-byte characters, a tab, control characters
const TEXT = `Grüße <b>bold</b> & "quotes" — 日本 🙂\tend.\u0001\u007f\n</script>`.repeat(3);
const textFile = writeFile(root, "text.txt", TEXT);
const DATA = Buffer.from(TEXT, "utf8");

const hello: HelloMsg = { seq: 0, type: "hello", protocol_version: 6, worker_version: "x", pid: 1, python: "3", torch: "t", transformers: "t", cuda_devices: 0 };
const loaded = (p: RunPlan): LoadedMsg => ({
  seq: 1, type: "loaded", seconds: 1, space: "tokens", space_reason: "every vocabulary agrees",
  tokenizer: { ref: p.models[0].ref, vocab_size: 512, bos_token_id: 0 },
  models: p.models.map((m) => ({ ref: m.ref, device: "cpu", dtype: "float32", parameters: 1, vocab_size: 512, max_positions: 128, head_path: "scored" as const, tokenizer: m.ref })),
});

function plan(extra: Record<string, unknown> = {}): RunPlan {
  return parseConfig({
    models: [{ ref: `org/${EVIL}` }, { ref: "org/b" }], dataset: { path: textFile, max_length: 64, stride: 64 },
    strategies: ["average", { type: "entropy", temperatures: [0.9, 1.1] }, { id: EVIL, type: "gap" }], ...extra,
  }, root);
}

/**
 * A token-space run made here: the text cut into "tokens" of 1 to 4 characters, the first
 * one unscored; per scored token each model's and each setting's NLL and weights drawn
 * from a seeded generator; the worker's sums are their window sums; positions: the view's.
 */
function simulate(p: RunPlan, viewBytes = DATA.length, seed = 5) {
  const rand = rng(seed);
  const chars = Array.from(TEXT);
  const spans: [number, number][] = [];
  let at = 0;
  for (let c = 0; c < chars.length;) {
    const k = Math.min(chars.length - c, 1 + Math.floor(rand() * 4));
    const b = Buffer.byteLength(chars.slice(c, c + k).join(""));
    spans.push([at, at + b]);
    at += b;
    c += k;
  }
  const scored = spans.slice(1);
  const n = scored.length;
  const nm = p.models.length;
  const draw = () => Array.from({ length: n }, () => 0.2 + 6 * rand());
  const modelNll = p.models.map(draw);
  const fusionNll = p.settings.map(draw);
  const alpha = p.settings.map(() => Array.from({ length: n }, () => {
    const a = rand();
    return nm === 2 ? [a, 1 - a] : [1];
  }));
  const sizes: number[] = [];
  for (let left = n; left > 0; left -= 16) sizes.push(Math.min(16, left));
  // a window's bytes: those of its tokens (the first window also token 0's), so they add up to the text's
  let first = 0;
  const bytes = sizes.map((size, w) => {
    const b = scored[first + size - 1][1] - (w === 0 ? 0 : scored[first][0]);
    first += size;
    return b;
  });
  const sums = windowedSums({
    modelNll, fusionNll, sizes, bytes, fusionWeights: alpha.map((per) => Array.from({ length: nm }, (_, m) => per.reduce((s, x) => s + x[m], 0))),
  });
  const asked = p.report.token_view!;
  const inView = scored.map((s, j) => [s, j] as const).filter(([s]) => s[1] <= viewBytes);
  const positions: Positions = {
    settings: [...asked.settings], bytes: inView.length ? inView[inView.length - 1][0][1] : 0,
    start: inView.map(([s]) => s[0]), end: inView.map(([s]) => s[1]),
    model_nll: modelNll.map((row) => inView.map(([, j]) => row[j])),
    fusion_nll: asked.settings.map((k) => inView.map(([, j]) => fusionNll[k][j])),
    weights: asked.settings.map((k) => Array.from({ length: nm }, (_, m) => inView.map(([, j]) => alpha[k][j][m]))),
  };
  const result: ResultMsg = {
    seq: 3, type: "result", request_id: "r1", space: "tokens", tokens: spans.length, windows: sizes.length, sums, byte_stats: null,
    seconds: 1, tokenize_seconds: 0, peak_memory_bytes: 1, device: "cpu", dtype: "float32", positions,
  };
  const metrics = buildMetrics({ models: p.models, request: planRequest(p), result, loaded: loaded(p), hello, seconds: 1, version: "0.0.0-test" });
  return { metrics, positions, result };
}

const page = (m: Metrics, positions: Positions | null, extra = {}) =>
  htmlReport(m, { view: positions ? { text: DATA, positions } : null, metricsFile: "m.json", ...extra });

/** The attributes of every element `<tag class="cls…"`, in order. */
function elements(html: string, tag: string, cls: string): Record<string, string>[] {
  const re = new RegExp(`<${tag} class="${cls}[^"]*"([^>]*)>`, "g");
  return [...html.matchAll(re)].map((m) => Object.fromEntries([...m[1].matchAll(/([\w-]+)="([^"]*)"/g)].map((a) => [a[1], a[2]])));
}

const unescape = (s: string) => s.replace(/&#10;/g, "\n").replace(/&lt;/g, "<").replace(/&gt;/g, ">").replace(/&quot;/g, '"').replace(/&#39;/g, "'").replace(/&amp;/g, "&");

describe("the page", () => {
  const p = plan();
  const { metrics, positions } = simulate(p);
  const html = page(metrics, positions);

  test("everything from the run is escaped; the JSON cannot close its element; the policy forbids any fetch and any script", () => {
    assert.ok(!html.includes("<script>alert"), "a ref or an id is never markup");
    assert.ok(html.includes("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;q&#39;"));
    const tokens = /<div class="tokens">(.*?)<\/div>/s.exec(html)![1];
    assert.ok(!/<(?!\/?span[ >])/.test(tokens), "nor is the text: the view holds spans and text, nothing else");
    assert.ok(tokens.includes("&lt;") && tokens.includes("&amp;"));
    assert.equal(html.split("</script>").length - 1, 1, "one </script>: the JSON block's own");
    assert.equal((html.match(/<script/g) ?? []).length, 1);
    assert.ok(html.includes('<script type="application/json" id="kotara-token-view">'));
    assert.ok(html.includes("\u2401") && html.includes("\u2421"), "control characters are shown as their symbols");
    assert.ok(!/[\u0001\u007f]/.test(html));
    assert.ok(html.includes(`<meta http-equiv="Content-Security-Policy" content="${CSP}">`));
    assert.ok(!/\b(src|href)="(?!#)/.test(html), "no src or href but in-page anchors");
    const json = JSON.parse(/<script type="application\/json" id="kotara-token-view">(.*?)<\/script>/s.exec(html)![1]);
    assert.deepEqual(json.positions, positions, "the numbers, every one at full precision");
    assert.deepEqual(json.settings, positions.settings.map((k) => metrics.fusions[k].id));
  });

  test("the sections and their parts are there; no fit section without metrics.fit, a rendered one with it", () => {
    for (const id of ["results", "token-view"]) assert.ok(html.includes(`<section id="${id}"`), id);
    assert.ok(!html.includes('<section id="heatmaps"'), "no sweep: no heatmap");
    assert.ok(!html.includes('id="fit"'));
    assert.equal(elements(html, "g", "row fusion").length, metrics.fusions.length);
    assert.equal(elements(html, "g", "row model").length, metrics.models.length);
    assert.equal(elements(html, "tr", "fusion").length, metrics.fusions.length);
    assert.equal((html.match(/<input type="radio" name="tv"/g) ?? []).length, positions.settings.length);
    const fitted = { ...metrics, fit: { method: "coordinate descent", settings: [{ id: "entropy", temperatures: [0.91, 1.07], bits_per_byte: 2.1234567 }], note: EVIL } };
    const withFit = page(fitted as Metrics, positions);
    assert.ok(withFit.includes('<section id="fit" class="fit"'));
    assert.ok(withFit.includes("coordinate descent") && withFit.includes("0.91 / 1.07") && withFit.includes("2.12346"));
    assert.ok(!withFit.includes("<script>alert"));
    assert.ok(withFit.includes('<a href="#fit">'));
  });

  test("the forest plot draws each fusion's Δ bits per byte and its 95% interval, as the metrics have them", () => {
    const svg = /<svg class="forest"[^>]*>/.exec(html)![0];
    const [lo, hi] = /data-domain="([^"]+)"/.exec(svg)![1].split(" ").map(Number);
    const x = forestScale(lo, hi);
    const rows = [...html.matchAll(/<g class="row fusion[^"]*" data-id="([^"]*)" data-delta="([^"]*)" data-lo="([^"]*)" data-hi="([^"]*)" data-excludes-zero="([^"]*)">(.*?)<\/g>/gs)];
    assert.equal(rows.length, metrics.fusions.length);
    const byId = new Map(metrics.fusions.map((f) => [f.id, f]));
    rows.forEach((r, i) => {
      const f = byId.get(unescape(r[1]))!;
      assert.equal(f.id, metrics.ranked[i].id, "in rank order");
      const v = f.vs_best_model;
      assert.deepEqual([Number(r[2]), Number(r[3]), Number(r[4])], [v.delta_bits_per_byte, ...v.ci95!], "full precision, exactly");
      assert.equal(r[5], String(v.excludes_zero));
      const ci = /<line class="ci" x1="([^"]+)" x2="([^"]+)"/.exec(r[6])!;
      const cx = Number(/<circle class="point" cx="([^"]+)"/.exec(r[6])![1]);
      // coordinates are written with 2 decimals: within 0.005 px of the scale
      assert.ok(Math.abs(Number(ci[1]) - x(v.ci95![0])) <= 0.005 && Math.abs(Number(ci[2]) - x(v.ci95![1])) <= 0.005);
      assert.ok(Math.abs(cx - x(v.delta_bits_per_byte)) <= 0.005);
      assert.ok(lo < v.ci95![0] && v.ci95![1] < hi, "the domain holds every interval");
      const cls = /class="row fusion (\w+)"/.exec(r[0])![1];
      assert.equal(cls, !v.excludes_zero ? "unsure" : v.delta_bits_per_byte < 0 ? "better" : "worse");
    });
    const zero = Number(/<line class="zero" x1="([^"]+)"/.exec(html)![1]);
    assert.ok(Math.abs(zero - x(0)) <= 0.005);
    // the models: Δ of each against the best (0 for it)
    const best = Math.min(...metrics.models.map((m) => m.bits_per_byte));
    elements(html, "g", "row model").forEach((g, m) => assert.equal(Number(g["data-delta"]), metrics.models[m].bits_per_byte - best));
  });

  test("each piece of text is coloured by the sign of the fusion's difference to the best model there; its title carries the weights", () => {
    const best = metrics.models.reduce((b, m, i) => (m.ppl < metrics.models[b].ppl ? i : b), 0);
    const spans = [...html.matchAll(/<span class="tok" style="([^"]*)"((?: data-d\d="[^"]*")+) data-positions="([^"]*)" title="([^"]*)">/g)];
    const segs = segments(DATA.subarray(0, positions.bytes), positions.start, positions.end);
    assert.equal(spans.length, segs.length);
    assert.equal(segs.flatMap((s) => s.positions).length, positions.start.length, "every position is in one piece");
    let gains = 0;
    let losses = 0;
    spans.forEach((sp, i) => {
      const js = sp[3].split(" ").map(Number);
      assert.deepEqual(js, segs[i].positions);
      const vars = Object.fromEntries(sp[1].split(";").map((kv) => kv.split(":")));
      const ds = [...sp[2].matchAll(/data-d(\d)="([^"]*)"/g)].map((m) => Number(m[2]));
      const title = unescape(sp[4]);
      positions.settings.forEach((k, a) => {
        const want = js.reduce((acc, j) => acc + positions.fusion_nll[a][j] - positions.model_nll[best][j], 0);
        // data-d is written with 6 significant digits
        assert.ok(Math.abs(ds[a] - want) <= 5e-6 * Math.abs(want) + 1e-300, `${ds[a]} vs ${want}`);
        const [r, , b] = [1, 3, 5].map((o) => parseInt(vars[`--c${a}`].slice(o, o + 2), 16));
        if (want < 0) assert.ok(b > r, `a gain is blue: ${vars[`--c${a}`]}`), gains++;
        else if (want > 0) assert.ok(r > b, `a loss is red: ${vars[`--c${a}`]}`), losses++;
        else assert.equal(vars[`--c${a}`], "#ffffff");
        // the weights of every position of the piece (up to 4), two decimals, in the model order
        const alphas = js.slice(0, 4).map((j) => positions.weights[a].map((w) => w[j].toFixed(2)).join("/")).join(", ");
        assert.ok(title.includes(`${metrics.fusions[k].id} `) && title.includes(`α ${alphas}`), `${title} lacks α ${alphas}`);
      });
      assert.ok(title.startsWith('"') && title.includes(`" (bytes ${segs[i].start}–${segs[i].end}`), title);
    });
    assert.ok(gains > 10 && losses > 10, "both signs are exercised");
  });

  test("the unscored first token and nothing else is shown as context; the text after the view is not shown", () => {
    const short = simulate(p, 40);
    const h = page(short.metrics, short.positions);
    const tokens = /<div class="tokens">(.*?)<\/div>/s.exec(h)![1];
    const shown = unescape(tokens.replace(/<[^>]+>/g, "")).replace(/[\u2400-\u2421]/g, "?");
    const want = DATA.subarray(0, short.positions.bytes).toString("utf8").replace(/[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f]/g, "?");
    assert.equal(shown, want);
    assert.ok(short.positions.bytes <= 40 && short.positions.bytes > 0);
    assert.equal((tokens.match(/class="ctx"/g) ?? []).length, 1, "token 0's text");
    assert.match(h, /The first \d+ bytes of/);
  });

  test("without a view: a note says why, or the section is left out", () => {
    const none = page(metrics, null, { viewNote: "No token view: report.token_view_bytes is 0." });
    assert.ok(none.includes('<section id="token-view">') && none.includes("report.token_view_bytes is 0") && !none.includes('class="tok"'));
    assert.ok(!page(metrics, null).includes('<section id="token-view">'));
  });
});

describe("its parts", () => {
  test("segments: characters whole, overlapping spans merged, an empty span joins the piece before it", () => {
    const t = Buffer.from("aé🙂b", "utf8"); // a=0, é=1..2, 🙂=3..6, b=7
    // per byte (byte space), then a token that ends inside 🙂, an empty one, the last one
    assert.deepEqual(segments(t, [0, 1, 2, 3, 4, 5, 6, 7], [1, 2, 3, 4, 5, 6, 7, 8]).map((s) => [s.start, s.end, s.positions]), [
      [0, 1, [0]], [1, 3, [1, 2]], [3, 7, [3, 4, 5, 6]], [7, 8, [7]],
    ]);
    // [1, 5) ends inside 🙂: it takes all of 🙂; [5, 5) has no text; [5, 8) starts inside 🙂: one piece with both
    assert.deepEqual(segments(t, [0, 0, 1, 5, 5], [0, 1, 5, 5, 8]).map((s) => [s.start, s.end, s.positions]), [
      [0, 1, [0, 1]], [1, 8, [2, 3, 4]],
    ]);
  });

  test("colours: white at 0, a blue gain, a red loss, full colour from the scale on", () => {
    assert.equal(deltaColour(0, 1), "#ffffff");
    assert.equal(deltaColour(-2, 1), "#2166ac");
    assert.equal(deltaColour(5, 1), "#b2182b");
    const half = deltaColour(-0.5, 1);
    assert.ok(half !== "#ffffff" && half !== "#2166ac");
  });

  test("ticks: steps of 1, 2 or 5 times a power of ten, 0 among them", () => {
    assert.deepEqual(niceTicks(-0.23, 0.11), [-0.2, -0.1, 0, 0.1]);
    assert.deepEqual(niceTicks(-1.2, 3.7), [-1, 0, 1, 2, 3]);
    assert.deepEqual(niceTicks(-3, 12), [0, 5, 10]);
  });
});

describe("config: report.html, report.token_view_bytes, report.token_view_settings", () => {
  const lines = (extra: Record<string, unknown>) => {
    try {
      plan(extra);
    } catch (e) {
      assert.ok(e instanceof ConfigError, String(e));
      return e.lines;
    }
    assert.fail("accepted");
  };

  test("defaults: the HTML report, 4096 bytes, the fusions at T = 1 (at most 4)", () => {
    const p = plan();
    assert.equal(p.report.html, true);
    assert.deepEqual(p.report.token_view, { settings: [0, 2], bytes: 4096 }, "average and the gap at T = 1; not entropy at 0.9, 1.1");
    assert.deepEqual(planRequest(p).positions, p.report.token_view);
    const only = plan({ strategies: [{ type: "entropy", temperatures: [0.9, 1.1] }, { type: "poe", temperatures: [1.2, 1] }] });
    assert.deepEqual(only.report.token_view?.settings, [0], "none at T = 1: the first");
    const many = plan({ strategies: ["average", "poe", "entropy", "gap", "mix", { type: "mix", weights: [1, 3] }] });
    assert.deepEqual(many.report.token_view?.settings, [0, 1, 2, 3]);
    assert.deepEqual(defaultViewSettings(many.settings), [0, 1, 2, 3]);
  });

  test("named fusions, a duplicate's id, no HTML, no view", () => {
    assert.deepEqual(plan({ report: { token_view_settings: [EVIL, "entropy@t=0.9,1.1"] } }).report.token_view?.settings, [2, 1]);
    // a setting evaluated once under another id is found under either
    const dup = plan({ strategies: ["entropy", { type: "entropy", temperatures: [1, 1], id: "e1" }], report: { token_view_settings: ["e1"] } });
    assert.deepEqual(dup.report.token_view?.settings, [0]);
    assert.equal(plan({ report: { html: false } }).report.token_view, null);
    assert.equal(plan({ report: { html: false } }).report.html, false);
    assert.equal(plan({ report: { token_view_bytes: 0 } }).report.token_view, null);
    assert.equal(planRequest(plan({ report: { token_view_bytes: 0 } })).positions, null);
    assert.deepEqual(plan({ report: { token_view_bytes: 65536 } }).report.token_view?.bytes, 65536);
  });

  test("bad values name the field", () => {
    assert.deepEqual(lines({ report: { html: "yes" } }), ['report.html: expected true or false, got "yes"']);
    assert.deepEqual(lines({ report: { token_view_bytes: -1 } }), ["report.token_view_bytes: must be from 0 (no token view) to 65536, got -1"]);
    assert.deepEqual(lines({ report: { token_view_bytes: 70000 } }), ["report.token_view_bytes: must be from 0 (no token view) to 65536, got 70000"]);
    assert.deepEqual(lines({ report: { token_view_bytes: 2.5 } }), ["report.token_view_bytes: must be an integer, got 2.5"]);
    assert.deepEqual(lines({ report: { token_view_settings: [] } }), ["report.token_view_settings: must list at least one fusion id (or leave it out for the default)"]);
    assert.deepEqual(lines({ report: { token_view_settings: ["a", "b", "c", "d", "e"] } }), ["report.token_view_settings: at most 4 fusions, got 5"]);
    assert.deepEqual(lines({ report: { token_view_settings: ["average", "median"] } }), [
      `report.token_view_settings[1]: no fusion of this run has the id "median"; its ids: average, entropy@t=0.9,1.1, ${EVIL}`,
    ]);
    assert.deepEqual(lines({ strategies: ["entropy", { type: "entropy", temperatures: [1, 1], id: "e1" }], report: { token_view_settings: ["entropy", "e1"] } }), [
      'report.token_view_settings[1]: "e1" is listed twice (it is the same setting as "entropy")',
    ]);
    assert.deepEqual(lines({ report: { token_view: 3 } }), ["report.token_view: unknown key; allowed: bootstrap, html, token_view_bytes, token_view_settings"]);
    // a broken strategy list is reported as itself, not as ids the view cannot find
    assert.deepEqual(lines({ strategies: ["median"], report: { token_view_settings: ["average"] } }), [
      'strategies[0]: unknown strategy "median"; known: average, poe, entropy, gap, mix',
    ]);
  });
});

describe("files", () => {
  test("writeRunOutputs writes <metrics>.html when asked, atomically, and lists it", async () => {
    const p = plan();
    const { metrics, positions } = simulate(p);
    const dir = join(root, "out");
    const file = join(dir, "run.json");
    const written = await writeRunOutputs(file, metrics, { html: { view: { text: DATA, positions } } });
    assert.deepEqual(written, [file, join(dir, "run.csv"), join(dir, "run.html")]);
    const html = readFileSync(join(dir, "run.html"), "utf8");
    assert.equal(html, htmlReport(metrics, { view: { text: DATA, positions }, metricsFile: "run.json" }));
    assert.deepEqual(await writeRunOutputs(join(dir, "plain.json"), metrics), [join(dir, "plain.json"), join(dir, "plain.csv")], "not asked: no HTML");
  });
});

// ---- through the CLI ----------------------------------------------------------------

/** The embedded per-position numbers of a report. */
function viewJson(html: string): { best_model: number; settings: string[]; positions: Positions } {
  return JSON.parse(/<script type="application\/json" id="kotara-token-view">(.*?)<\/script>/s.exec(html)![1]);
}

function fakeModels(dir: string): [string, string] {
  const ms = ["model-a", "model-b"].map((n) => join(dir, n));
  for (const m of ms) {
    mkdirSync(m, { recursive: true });
    writeFileSync(join(m, "config.json"), JSON.stringify({ vocab_size: 400, n_positions: 128, bos_token_id: 0 }));
  }
  return ms as [string, string];
}

describe("kotara run on the fake worker", () => {
  test("the HTML report is written next to the metrics and named; the worker was asked for the view; its numbers are the fake's closed form", async () => {
    const dir = subDir("cli");
    const [a, b] = fakeModels(dir);
    const text = writeFile(dir, "t.txt", "Ünïcödé prose — for the fake worker.\nIt has lines.\n".repeat(30));
    const cfg = writeFile(dir, "c.yaml", [
      `models: [{ ref: ${a} }, { ref: ${b} }]`, `dataset: { path: ${text}, max_length: 64, stride: 32 }`,
      "strategies: [average, { type: poe, betas: [0.8, 0.2] }]", "sweep: { strategies: [gap], temperatures: [[0.9, 1], [1, 1.1]] }",
      "report: { token_view_bytes: 500, token_view_settings: ['poe@t=1,1;b=0.8,0.2', average] }",
    ].join("\n"));
    const metricsFile = join(dir, "out", "c.json");
    const record = join(dir, "rec.jsonl");
    const r = await kotara(["run", cfg, "--metrics", metricsFile], { env: { KOTARA_PYTHON: FAKE_PYTHON, KOTARA_FAKE_RECORD: record } });
    assert.equal(r.exitCode, 0, r.stderr);
    const htmlFile = join(dir, "out", "c.html");
    assert.ok(r.stderr.split("\n").includes(`wrote ${htmlFile}`), r.stderr);
    const sent = readFileSync(record, "utf8").trim().split("\n").map((l) => JSON.parse(l)).find((m) => m.type === "evaluate");
    assert.deepEqual(sent.positions, { settings: [1, 0], bytes: 500 });
    const m = JSON.parse(readFileSync(metricsFile, "utf8")) as Metrics;
    const html = readFileSync(htmlFile, "utf8");
    assert.ok(html.includes('<section id="heatmaps"') && html.includes('<g class="panel" data-strategy="gap"'));
    const v = viewJson(html);
    assert.deepEqual(v.settings, ["poe@t=1,1;b=0.8,0.2", "average"]);
    // canned.ts: the fake's tokens are bytes; every scored byte before the cut (500, back to a
    // character boundary) is a position; each has NLL ln(20 + 5m), ν_s, α of its setting
    const data = readFileSync(text);
    let cut = 500;
    while ((data[cut] & 0xc0) === 0x80) cut--;
    assert.equal(v.positions.bytes, cut);
    assert.deepEqual(v.positions.start, Array.from({ length: cut - 1 }, (_, i) => i + 1), "byte 0 has no context");
    v.positions.model_nll.forEach((row, i) => assert.ok(row.every((x) => x === Math.log(20 + 5 * i))));
    v.settings.forEach((id, a) => {
      const f = m.fusions.find((x) => x.id === id)!;
      assert.ok(v.positions.fusion_nll[a].every((x) => Math.abs(x - f.nll) <= 1e-12 * f.nll), "the fusion's NLL per token");
      v.positions.weights[a].forEach((row, k) => assert.ok(row.every((x) => Math.abs(x - f.weights_mean[k]) <= 1e-12)));
    });
    // poe with betas 0.8/0.2 is worse than model a (PPL 18.18 · (1 + 0.18) > 20): a loss; average a gain
    const tok = [...html.matchAll(/<span class="tok" style="--c0:(#\w+);--c1:(#\w+)/g)];
    assert.ok(tok.length > 100 && tok.every((t) => parseInt(t[1].slice(1, 3), 16) > parseInt(t[1].slice(5, 7), 16) && parseInt(t[2].slice(5, 7), 16) > parseInt(t[2].slice(1, 3), 16)));
  });

  test("report.html: false writes no page and asks for no positions", async () => {
    const dir = subDir("cli");
    const [a, b] = fakeModels(dir);
    const text = writeFile(dir, "t.txt", "Some prose for the fake worker, a few words long.\n".repeat(4));
    const cfg = writeFile(dir, "c.yaml", [`models: [{ ref: ${a} }, { ref: ${b} }]`, `dataset: { path: ${text}, max_length: 64, stride: 32 }`,
      "strategies: [average]", "report: { html: false }"].join("\n"));
    const record = join(dir, "rec.jsonl");
    const r = await kotara(["run", cfg, "--metrics", join(dir, "m.json")], { env: { KOTARA_PYTHON: FAKE_PYTHON, KOTARA_FAKE_RECORD: record } });
    assert.equal(r.exitCode, 0, r.stderr);
    assert.ok(!existsSync(join(dir, "m.html")) && !r.stderr.includes(".html"));
    const sent = readFileSync(record, "utf8").trim().split("\n").map((l) => JSON.parse(l)).find((m) => m.type === "evaluate");
    assert.equal("positions" in sent, false);
  });
});

describe("kotara run on the tiny models: the view's numbers are what the pass summed", () => {
  // Tolerance of the sums below: the per-position NLLs are float64 numbers that the pass
  // added window by window (float64, in order) into the totals; adding the same n ≤ ~2,000
  // numbers here in one run differs by at most n · 2⁻⁵³ of the total (≈ 2e-13), and the
  // metrics' nll is total / n, so total = nll · n up to another ulp: 1e-11 relative is
  // far above the rounding and far below one position missing or doubled (≥ 1e-4).
  const sum = (xs: number[]) => xs.reduce((a, x) => a + x, 0);
  const rel = (a: number, b: number) => Math.abs(a - b) / Math.abs(b);

  test("token space: a view of the whole text sums to the totals, and its spans tile the text after token 0", async () => {
    const models = tinyModels();
    const dir = subDir("tiny");
    const text = readFileSync(join(models, "text.txt"), "utf8").slice(0, 3000);
    const file = writeFile(dir, "t.txt", text);
    const cfg = writeFile(dir, "c.yaml", [
      "models:", `  - { ref: ${join(models, "gpt2-a")}, device: cpu }`, `  - { ref: ${join(models, "llama")}, device: cpu }`,
      `dataset: { path: ${file}, max_length: 64, stride: 32 }`, "strategies: [average, { type: entropy, temperatures: [0.9, 1.1] }, mix]",
      "report: { token_view_bytes: 65536, token_view_settings: [mix, 'entropy@t=0.9,1.1'] }",
    ].join("\n"));
    const r = await kotara(["run", cfg, "--metrics", join(dir, "m.json"), "--quiet"]);
    assert.equal(r.exitCode, 0, r.stderr);
    const m = JSON.parse(readFileSync(join(dir, "m.json"), "utf8")) as Metrics;
    const v = viewJson(readFileSync(join(dir, "m.html"), "utf8"));
    const n = m.dataset.scored_tokens;
    assert.equal(v.positions.start.length, n, "every scored token is in the view");
    m.models.forEach((mm, i) => assert.ok(rel(sum(v.positions.model_nll[i]), mm.nll * n) <= 1e-11, mm.ref));
    v.settings.forEach((id, a) => {
      const f = m.fusions.find((x) => x.id === id)!;
      assert.ok(rel(sum(v.positions.fusion_nll[a]), f.nll * n) <= 1e-11, id);
      f.weights_mean.forEach((w, k) => assert.ok(rel(sum(v.positions.weights[a][k]) / n, w) <= 1e-11, `${id} α${k}`));
    });
    const data = Buffer.from(text);
    assert.equal(v.positions.bytes, data.length);
    assert.equal(v.positions.end[v.positions.end.length - 1], data.length);
    v.positions.start.forEach((s, j) => j > 0 && assert.equal(s, v.positions.end[j - 1], "S < L: consecutive tokens"));
    // token 0 (not scored) is the text before the first span: one word, no more
    assert.match(data.subarray(0, v.positions.start[0]).toString(), /^\S+$/);
  });

  test("byte space: a view of the whole text sums to the totals; a position is a byte", async () => {
    const models = tinyModels();
    const dir = subDir("tiny");
    const text = "The cat sees a red boat. Grüße! 🙂\nA small dog follows the road.";
    const file = writeFile(dir, "t.txt", text);
    const cfg = writeFile(dir, "c.yaml", [
      "space: bytes", "bytes: { beam: 2 }",
      "models:", `  - { ref: ${join(models, "gpt2-a")}, device: cpu }`, `  - { ref: ${join(models, "gpt2-othertok")}, device: cpu }`,
      `dataset: { path: ${file}, max_length: 48, stride: 32 }`, "strategies: [average, gap]",
    ].join("\n"));
    const r = await kotara(["run", cfg, "--metrics", join(dir, "m.json"), "--quiet"]);
    assert.equal(r.exitCode, 0, r.stderr);
    const m = JSON.parse(readFileSync(join(dir, "m.json"), "utf8")) as Metrics;
    const html = readFileSync(join(dir, "m.html"), "utf8");
    const v = viewJson(html);
    const nb = Buffer.byteLength(text);
    assert.equal(m.space, "bytes");
    assert.deepEqual(v.positions.start, Array.from({ length: nb }, (_, i) => i));
    assert.deepEqual(v.settings, ["average", "gap"], "the default: the fusions at T = 1");
    m.models.forEach((mm, i) => assert.ok(rel(sum(v.positions.model_nll[i]), mm.nll * nb) <= 1e-11, mm.ref));
    v.settings.forEach((id, a) => assert.ok(rel(sum(v.positions.fusion_nll[a]), m.fusions.find((x) => x.id === id)!.nll * nb) <= 1e-11, id));
    // one piece per character: 🙂's four bytes are one
    assert.equal((html.match(/<span class="tok"/g) ?? []).length, Array.from(text).length);
    assert.match(html, /each character \(the NLLs of its bytes added up\)/);
  });
});

// ---- in a real browser ----------------------------------------------------------------

/** Chromium (KOTARA_CHROMIUM, or chromium / chromium-browser / google-chrome on the PATH), or null. */
function findChromium(): string | null {
  const env = process.env.KOTARA_CHROMIUM;
  if (env) return existsSync(env) ? env : null;
  for (const name of ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"]) {
    const r = spawnSync("sh", ["-c", `command -v ${name}`], { encoding: "utf8" });
    if (r.status === 0 && r.stdout.trim()) return r.stdout.trim();
  }
  return null;
}

const CHROMIUM = findChromium();

/**
 * Renders a file headless: the DOM after load (--dump-dom), and what the page logged
 * (--enable-logging=stderr writes every console message, uncaught error and CSP
 * violation as an "INFO:CONSOLE" line), and optionally a screenshot.
 */
function render(file: string, opts: { screenshot?: string } = {}): { dom: string; console: string[] } {
  const profile = subDir("chromium");
  const args = ["--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--disable-extensions", `--user-data-dir=${profile}`,
    "--enable-logging=stderr", "--v=0", "--hide-scrollbars", "--window-size=1200,1600"];
  const url = `file://${file}`;
  try {
    const r = spawnSync(CHROMIUM!, [...args, "--dump-dom", url], { encoding: "utf8", timeout: 120_000, maxBuffer: 256 << 20 });
    assert.equal(r.status, 0, `chromium: ${r.error ?? ""} ${r.stderr.slice(-2000)}`);
    if (opts.screenshot) {
      const s = spawnSync(CHROMIUM!, [...args, `--screenshot=${opts.screenshot}`, url], { encoding: "utf8", timeout: 120_000 });
      assert.equal(s.status, 0, s.stderr.slice(-2000));
    }
    return { dom: r.stdout, console: r.stderr.split("\n").filter((l) => /:CONSOLE[(:]/.test(l)) };
  } finally {
    rmSync(profile, { recursive: true, force: true });
  }
}

describe("in headless Chromium", { skip: CHROMIUM ? false : "Chromium is not installed (apt-get install chromium)" }, () => {
  test("the check sees what it should: a script error, a console message and a blocked fetch are caught", () => {
    const bad = writeFile(root, "bad.html", `<!doctype html><html><head><meta http-equiv="Content-Security-Policy" content="${CSP.replace(/"/g, "&quot;")}">` +
      `</head><body><p>x</p><img src="https://example.invalid/a.png"></body></html>`);
    const worse = writeFile(root, "worse.html", '<!doctype html><html><body><script>console.error("boom"); notDefined();</script></body></html>');
    assert.ok(render(bad).console.some((l) => /Content Security Policy/.test(l)), "a fetch the policy blocks");
    const w = render(worse).console;
    assert.ok(w.some((l) => /boom/.test(l)) && w.some((l) => /Uncaught ReferenceError/.test(l)), w.join("\n"));
  });

  test("a report renders with no console message, and its elements are in the DOM", async () => {
    const p = plan({ sweep: { strategies: ["entropy"], temperatures: [[0.9, 1], [1, 1.1]] } });
    const { metrics, positions } = simulate(p);
    const dir = join(root, "browser");
    await writeRunOutputs(join(dir, "r.json"), metrics, { html: { view: { text: DATA, positions } } });
    const file = join(dir, "r.html");
    const shot = join(dir, "r.png");
    const { dom, console } = render(file, { screenshot: shot });
    assert.deepEqual(console, [], "no errors, no messages, nothing blocked");
    for (const id of ["results", "heatmaps", "token-view"]) assert.ok(dom.includes(`<section id="${id}"`), id);
    // the browser's DOM has what the file has: no element dropped or moved by the parser
    const html = readFileSync(file, "utf8");
    for (const [re, what] of [[/<g class="row fusion/g, "forest rows"], [/<span class="tok"/g, "token pieces"], [/<tr class="fusion/g, "table rows"],
      [/<g class="panel"/g, "heatmap panels"], [/<input type="radio"/g, "fusion tabs"]] as const) {
      const inDom = (dom.match(re) ?? []).length;
      assert.equal(inDom, (html.match(re) ?? []).length, what);
      assert.ok(inDom > 0, what);
    }
    assert.equal((dom.match(/<g class="row fusion/g) ?? []).length, metrics.fusions.length);
    assert.ok(/<main>\s*<section id="results">/.test(dom), "the sections are where the page put them");
    assert.ok(statSync(shot).size > 10_000, "a screenshot was drawn");
  });
});
