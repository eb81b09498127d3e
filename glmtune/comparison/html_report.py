"""The comparison as one self-contained HTML page (no server, no network: styles, script and chart
inline): the verdict, the metrics with directions and intervals, departments, the knowledge check,
the blind review's results, the chart, and every prompt with its reference and both answers side by
side, sortable and filterable. Its second view is the blind review itself (`#review`): one prompt at
a time, the answers as "Answer 1" and "Answer 2" in `review.order`'s order, ratings kept in the
browser's local storage under the report's id and downloaded as a JSON file for `--ratings`."""

from __future__ import annotations

import base64
import json
from dataclasses import asdict
from html import escape
from pathlib import Path

from ..core.files import write_atomic
from ..core.terminal import printable
from .report import NO_BENCHMARK_SETTING, SCORING_NOTE, SIDES, Answer, Knowledge, Report, Review, Row
from .review import FORMAT, order
from .scoring import (DEPARTMENT_COLUMNS, GROUP_COLUMNS, METRIC_COLUMNS, NO_BENCHMARK, NO_REVIEW, REVIEW_COLUMNS,
                      SUBJECT_COLUMNS, accuracy_rows, agreement_line, department_rows, disagreement_lines,
                      distinct_line, flag_line, knowledge_head, metric_rows, preference_rows, review_head,
                      review_table, timing_lines)

# Chinese text needs a CJK font: per character the browser takes the first font in the list that has the
# glyph, so these come before the generic family, which without one draws boxes (tofu).
CJK_FONTS = '"PingFang SC","Hiragino Sans GB","Microsoft YaHei","Noto Sans CJK SC","Source Han Sans SC","WenQuanYi Micro Hei"'
NARROW = 960  # px: below it the answers table is read as one card per prompt

STYLE = f"""
*,*::before,*::after{{box-sizing:border-box}}
html{{-webkit-text-size-adjust:100%;text-size-adjust:100%}}
body{{font:14px/1.5 system-ui,-apple-system,"Segoe UI",{CJK_FONTS},sans-serif;margin:24px auto;padding:0 24px;
 max-width:1600px;color:#1f2933;overflow-wrap:break-word}}
h1{{font-size:20px;margin:0 0 4px}}h2{{font-size:16px;margin:28px 0 8px}}
.meta{{color:#52606d;font-size:12px;overflow-wrap:anywhere}}
.verdict{{border-radius:6px;padding:12px 16px;margin:16px 0;border-left:6px solid}}
.verdict.good{{background:#e3f9e5;border-color:#31b237}}.verdict.bad{{background:#ffe3e3;border-color:#d64545}}
.verdict.none{{background:#f0f4f8;border-color:#829ab1}}
.verdict b{{font-size:16px}}.verdict ul{{margin:6px 0 0;padding-left:20px}}
pre{{background:#f5f7fa;padding:10px;overflow-x:auto;font-size:12px;
 font-family:ui-monospace,Menlo,Consolas,"DejaVu Sans Mono",{CJK_FONTS},monospace}}
.wide{{overflow-x:auto;max-width:100%}}
.wide{{background:linear-gradient(to right,#fff 30%,#fff0) left/32px 100% no-repeat local,
 linear-gradient(to left,#fff 30%,#fff0) right/32px 100% no-repeat local,
 radial-gradient(farthest-side at 0 50%,#0003,#0000) left/12px 100% no-repeat scroll,
 radial-gradient(farthest-side at 100% 50%,#0003,#0000) right/12px 100% no-repeat scroll}}
.chart img{{display:block;width:100%;max-width:100%;height:auto;border:1px solid #e4e7eb;cursor:zoom-in}}
.chart img.full{{width:auto;max-width:none;cursor:zoom-out}}
table.answers{{border-collapse:collapse;width:100%;table-layout:fixed}}
table.answers th{{position:sticky;top:0;background:#243b53;color:#fff;font-weight:600;cursor:pointer;padding:6px;
 text-align:left;font-size:12px;user-select:none}}
table.answers td{{border-bottom:1px solid #d9e2ec;vertical-align:top;padding:6px;font-size:13px}}
table.answers td div.text{{max-height:14em;overflow-y:auto;white-space:pre-wrap;overflow-wrap:anywhere}}
table.answers td.up,table.answers td.down,table.answers td:nth-child(n+7){{white-space:nowrap}}
tr.flagged td{{background:#fff8e1}}
.flag{{display:inline-block;background:#d64545;color:#fff;border-radius:3px;padding:0 4px;margin-right:3px;
 font-size:11px}}.flag.truncated{{background:#de911d}}
.score{{color:#52606d;font-size:11px}}.up{{color:#207227}}.down{{color:#b42318}}
table.figures{{border-collapse:collapse;font-size:13px}}
table.figures th,table.figures td{{padding:3px 10px;border-bottom:1px solid #d9e2ec;text-align:right}}
table.figures td:not(:first-child){{white-space:nowrap}}table.figures td:first-child{{min-width:9em}}
table.figures th{{background:#f0f4f8}}h3{{font-size:14px;margin:16px 0 6px}}
table.changed td{{text-align:left;vertical-align:top}}table.changed td:first-child{{min-width:16em;max-width:40em}}
table.changed div.text{{max-height:6em;overflow-y:auto;white-space:pre-wrap;overflow-wrap:anywhere}}table.figures td:first-child,table.figures th:first-child{{text-align:left}}
.controls{{margin:8px 0}}.controls input[type=search]{{width:min(280px,100%);padding:4px}}
@media (max-width:{NARROW - 1}px){{
 table.answers,table.answers thead,table.answers tbody{{display:block}}
 table.answers colgroup,table.answers th:not([data-key]){{display:none}}
 table.answers thead tr{{display:flex;flex-wrap:wrap;gap:4px}}
 table.answers th{{position:static;border-radius:4px}}
 table.answers tbody tr{{display:grid;grid-template-columns:auto 1fr auto auto;align-items:baseline;
  border:1px solid #d9e2ec;border-radius:6px;margin:10px 0}}
 table.answers tbody tr[hidden]{{display:none}}
 table.answers tbody td{{border:0;padding:4px 8px}}
 table.answers tbody td:nth-child(n+3):nth-child(-n+6){{grid-column:1/-1}}
 table.answers tbody td:nth-child(7){{grid-area:1/3}}table.answers tbody td:nth-child(8){{grid-area:1/4}}
 table.answers tbody td::before{{color:#52606d;font-size:11px;font-weight:600;margin-right:4px}}
 table.answers tbody td:nth-child(n+3):nth-child(-n+6)::before{{display:block}}
}}
@media (max-width:600px){{body{{margin:12px auto;padding:0 10px}}table.figures th,table.figures td{{padding:3px 6px}}}}
nav.modes{{display:flex;gap:6px;margin:10px 0}}nav.modes a{{padding:5px 12px;border:1px solid #bcccdc;border-radius:4px;
 text-decoration:none;color:#243b53}}nav.modes a.on{{background:#243b53;color:#fff;border-color:#243b53}}
#review-view{{max-width:1200px}}#review-view .bar{{display:flex;flex-wrap:wrap;gap:8px 16px;align-items:center;margin:8px 0}}
#review-view progress{{width:min(240px,100%)}}
#review-view .prompt{{background:#f0f4f8;border-radius:6px;padding:10px 12px;white-space:pre-wrap;overflow-wrap:anywhere}}
#review-view .pair{{display:grid;grid-template-columns:1fr 1fr;gap:12px;margin:12px 0}}
#review-view .answer{{border:2px solid #d9e2ec;border-radius:6px;padding:8px 12px;min-width:0}}
#review-view .answer.picked{{border-color:#2f7ed8;background:#f5f9ff}}
#review-view .answer h3{{margin:0 0 6px;font-size:14px}}#review-view .answer .label{{color:#b42318;font-weight:600}}
#review-view .answer div.text{{white-space:pre-wrap;overflow-wrap:anywhere;max-height:60vh;overflow-y:auto}}
#review-view .choices{{display:flex;flex-wrap:wrap;gap:8px;position:sticky;bottom:0;background:#fff;padding:8px 0;
 border-top:1px solid #d9e2ec}}#review-view code{{white-space:nowrap}}
#review-view button{{font:inherit;padding:6px 12px;border:1px solid #829ab1;border-radius:4px;background:#fff;cursor:pointer}}
#review-view button[aria-pressed=true]{{background:#2f7ed8;color:#fff;border-color:#2f7ed8}}
#review-view textarea{{width:100%;min-height:3em;margin:8px 0;font:inherit}}
#review-view kbd{{border:1px solid #bcccdc;border-radius:3px;padding:0 4px;font-size:11px}}
#review-view form{{margin:12px 0}}#review-view input[type=text]{{font:inherit;padding:4px;width:min(260px,100%)}}
@media (max-width:700px){{#review-view .pair{{grid-template-columns:1fr}}}}
"""


SCRIPT = """
const table=document.querySelector('table.answers'),body=table.tBodies[0];
let sortKey=null,ascending=true;
table.querySelectorAll('th[data-key]').forEach(th=>th.addEventListener('click',()=>{
  const key=th.dataset.key;ascending=sortKey===key?!ascending:th.dataset.first!=='desc';sortKey=key;
  const rows=[...body.rows];
  rows.sort((a,b)=>{const x=a.dataset[key],y=b.dataset[key];
    const nx=parseFloat(x),ny=parseFloat(y);
    if(isNaN(nx)&&isNaN(ny))return ascending?x.localeCompare(y):y.localeCompare(x);
    if(isNaN(nx))return 1;if(isNaN(ny))return -1;return ascending?nx-ny:ny-nx;});
  rows.forEach(r=>body.appendChild(r));
  table.querySelectorAll('th').forEach(h=>h.textContent=h.textContent.replace(/ [▲▼]$/,''));
  th.textContent+=ascending?' ▲':' ▼';}));
const search=document.getElementById('search'),onlyFlagged=document.getElementById('flagged');
function filter(){const q=search.value.trim().toLowerCase();let shown=0;
  [...body.rows].forEach(r=>{const ok=(!q||r.textContent.toLowerCase().includes(q))&&
    (!onlyFlagged.checked||r.classList.contains('flagged'));r.hidden=!ok;shown+=ok;});
  document.getElementById('shown').textContent=shown;}
search.addEventListener('input',filter);onlyFlagged.addEventListener('change',filter);
const chart=document.querySelector('.chart img');
if(chart)chart.addEventListener('click',()=>chart.classList.toggle('full'));
"""

# The blind review: one prompt at a time from the embedded data, ratings in localStorage under the
# report's id (so a reload, or coming back another day in the same browser, keeps them).
REVIEW_SCRIPT = """
const data=JSON.parse(document.getElementById('review-data').textContent);
const $=id=>document.getElementById(id),NAME='glmtune-reviewer',memory={};
const store={get(k){try{return localStorage.getItem(k);}catch(e){return memory[k]??null;}},
  set(k,v){try{localStorage.setItem(k,v);}catch(e){memory[k]=v;$('rv-volatile').hidden=false;}}};
try{localStorage.getItem(NAME);}catch(e){$('rv-volatile').hidden=false;}
let reviewer=store.get(NAME)||'',state;
function load(){let saved={};try{saved=JSON.parse(store.get('glmtune-review:'+data.report+':'+reviewer)||'{}');}catch(e){}
  state=Object.assign({ratings:{},drafts:{},at:0},saved);}
const save=()=>store.set('glmtune-review:'+data.report+':'+reviewer,JSON.stringify(state));
const count=()=>data.prompts.filter(p=>state.ratings[p.id]).length;
function show(i){
  const at=Math.max(0,Math.min(data.prompts.length-1,i));
  if(at!==state.at)$('rv-reveal').checked=false;  // the names are shown for one prompt at a time
  state.at=at;save();
  const p=data.prompts[at],r=state.ratings[p.id],reveal=$('rv-reveal').checked;
  $('rv-pos').textContent=at+1;$('rv-prompt').textContent=p.prompt;
  $('rv-reference').hidden=!$('rv-show-ref').checked;$('rv-ref-text').textContent=p.reference??'(no reference answer)';
  [1,2].forEach(k=>{$('rv-a'+k).textContent=p.answers[k-1]||'(empty)';
    $('rv-l'+k).textContent=reveal?(p.labels[k-1]==='tuned'?'fine-tuned':'base'):'';
    $('rv-box'+k).classList.toggle('picked',!!r&&r.choice===String(k));});
  document.querySelectorAll('#review-view [data-choice]').forEach(b=>b.setAttribute('aria-pressed',String(!!r&&r.choice===b.dataset.choice)));
  $('rv-note').value=r?r.note:(state.drafts[p.id]||'');$('rv-count').textContent=count();$('rv-bar').value=count();
  $('rv-dept').textContent=p.department?' · '+p.department:'';}
function choose(choice){
  const p=data.prompts[state.at];
  state.ratings[p.id]={choice,note:$('rv-note').value.trim(),at:new Date().toISOString(),revealed:$('rv-reveal').checked};
  delete state.drafts[p.id];save();
  show(state.at+1<data.prompts.length?state.at+1:state.at);}
function next(){const i=data.prompts.findIndex((p,j)=>j>state.at&&!state.ratings[p.id]);
  const k=i>=0?i:data.prompts.findIndex(p=>!state.ratings[p.id]);show(k>=0?k:state.at);}
function named(){const has=!!reviewer&&data.prompts.length>0;$('rv-name-form').hidden=!!reviewer||!data.prompts.length;
  $('rv-main').hidden=!has;$('rv-empty').hidden=data.prompts.length>0;$('rv-who').textContent=reviewer;
  if(!reviewer&&data.prompts.length)$('rv-name').focus();}
$('rv-name-form').addEventListener('submit',e=>{e.preventDefault();const v=$('rv-name').value.trim();if(!v)return;
  reviewer=v;store.set(NAME,v);load();$('rv-reveal').checked=false;named();show(state.at);});
$('rv-rename').addEventListener('click',()=>{$('rv-name').value=reviewer;reviewer='';named();});
document.querySelectorAll('#review-view [data-choice]').forEach(b=>b.addEventListener('click',()=>{b.blur();choose(b.dataset.choice);}));
$('rv-prev').addEventListener('click',()=>show(state.at-1));$('rv-next').addEventListener('click',()=>show(state.at+1));
$('rv-unrated').addEventListener('click',next);
['rv-reveal','rv-show-ref'].forEach(id=>$(id).addEventListener('change',()=>show(state.at)));
$('rv-note').addEventListener('input',()=>{const id=data.prompts[state.at].id,r=state.ratings[id],note=$('rv-note').value.trim();
  if(r)r.note=note;else state.drafts[id]=note;save();});
$('rv-download').addEventListener('click',()=>{
  const out={format:data.format,report:data.report,reviewer,saved:new Date().toISOString(),
    ratings:data.prompts.filter(p=>state.ratings[p.id]).map(p=>{const r=state.ratings[p.id];
      return {prompt:p.id,choice:r.choice,note:r.note,at:r.at,revealed:!!r.revealed};})};
  const a=document.createElement('a');
  a.href=URL.createObjectURL(new Blob([JSON.stringify(out,null,1)],{type:'application/json'}));
  a.download='ratings-'+reviewer.replace(/[^\\w\u4e00-\u9fff-]+/g,'_')+'-'+data.report.slice(0,8)+'.json';
  document.body.appendChild(a);a.click();a.remove();});
function mode(){const review=location.hash==='#review';
  $('report-view').hidden=review;$('review-view').hidden=!review;
  document.querySelectorAll('nav.modes a').forEach(a=>a.classList.toggle('on',(a.hash==='#review')===review));
  if(review){named();if(reviewer&&data.prompts.length)show(state.at);}}
load();addEventListener('hashchange',mode);mode();
document.addEventListener('keydown',e=>{
  if($('review-view').hidden||!reviewer||!data.prompts.length||e.repeat||e.target.matches('textarea,input,button')||
     e.ctrlKey||e.metaKey||e.altKey)return;
  if(['1','0','2'].includes(e.key)){choose(e.key);e.preventDefault();}
  else if(e.key==='ArrowRight'){show(state.at+1);e.preventDefault();}
  else if(e.key==='ArrowLeft'){show(state.at-1);e.preventDefault();}});
"""


def _text(text: str) -> str:
    """Answer text as HTML text: markup escaped, control characters shown as escapes, lines kept."""
    return escape(printable(text, keep="\n"))


def _table(columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<div class="wide"><table class="figures"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _flags(flags: list[str]) -> str:
    return "".join(f'<span class="flag {escape(f)}">{escape(f)}</span>' for f in flags)


def _score(value, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _answer_cell(answer: Answer) -> str:
    scores = answer.scores
    rouge = "" if scores["rougeL"] is None else f"ROUGE-L {scores['rougeL']:.3f} · "
    return (f'<td>{_flags(answer.flags)}<div class="text">{_text(answer.text) or "<i>(empty)</i>"}</div>'
            f'<div class="score">{rouge}{scores["chars"]} chars · {scores["tokens"]} tokens</div></td>')


def _delta(value, percent: bool = False, directed: bool = True) -> str:
    """A change, coloured only where its direction means better or worse (ROUGE-L, not length)."""
    if value is None:
        return "<td></td>"
    text = f"{100 * value:+.0f}%" if percent else f"{value:+.3f}"
    tone = ("up" if value > 0 else "down" if value < 0 else "") if directed else ""
    return f'<td class="{tone}">{text}</td>'


def _row(r: Row) -> str:
    flagged = any(r.answers[side].flags for side in SIDES)
    data = {"index": r.index + 1, "department": r.department or "",
            "rouge": _score(r.change.rougeL, 6), "chars": _score(r.change.chars, 6),
            **{f"flags{side}": len(r.answers[side].flags) for side in SIDES}}
    attrs = " ".join(f'data-{k}="{escape(str(v))}"' for k, v in data.items())
    reference = "" if r.reference is None else _text(r.reference)
    return (f'<tr {attrs}{" class=flagged" if flagged else ""}><td>{r.index + 1}</td>'
            f'<td>{escape(r.department or "")}</td><td><div class="text">{_text(r.prompt)}</div></td>'
            f'<td><div class="text">{reference}</div></td>{_answer_cell(r.answers.base)}{_answer_cell(r.answers.tuned)}'
            f'{_delta(r.change.rougeL)}{_delta(r.change.chars, percent=True, directed=False)}</tr>')


CHANGED_COLUMNS = ("question", "subject", "", "right", "base", "fine-tuned")


def _knowledge(knowledge: Knowledge | None, asked: bool) -> str:
    """The knowledge check's section: groups, subjects, and each question whose answer changed
    (folded: a random-weight model changes hundreds)."""
    if knowledge is None:
        return "" if asked else f"<h2>Knowledge check</h2><p class=meta>{escape(NO_BENCHMARK)}</p>"
    changed = "".join(
        f'<tr><td><div class="text">{_text(c.question)}</div><div class="score">{escape(c.id)}</div></td>'
        f'<td>{escape(c.subject)}</td><td>{"wrong→right" if c.tuned == c.answer else "right→wrong" if c.base == c.answer else "wrong→wrong"}</td>'
        f'<td>{escape(c.answer)}</td><td>{escape(c.base)}</td><td>{escape(c.tuned)}</td></tr>' for c in knowledge.changed)
    head = "".join(f"<th>{escape(c)}</th>" for c in CHANGED_COLUMNS)
    return (f'<h2>Knowledge check</h2><div class="meta">{escape(knowledge_head(knowledge))}</div>'
            f'{_table(GROUP_COLUMNS, accuracy_rows(knowledge.groups))}'
            f'<h3>By subject</h3>{_table(SUBJECT_COLUMNS, accuracy_rows(knowledge.subjects, subjects=True))}'
            f'<details><summary>{len(knowledge.changed)} of {knowledge.questions} questions answered otherwise '
            f'by the fine-tuned model</summary><div class="wide"><table class="figures changed"><thead><tr>{head}'
            f'</tr></thead><tbody>{changed}</tbody></table></div></details>')


def _review_results(review: Review | None) -> str:
    """The review's results in the report view, or how to start one."""
    if review is None:
        return f'<h2>Blind review</h2><p class="meta">{escape(NO_REVIEW)}</p>'
    return (f'<h2>Blind review</h2><div class="meta">{escape(review_head(review))}</div>'
            f"{_table(REVIEW_COLUMNS, preference_rows(review_table(review)))}"
            f"<p>{escape(agreement_line(review))}</p><pre>{escape(chr(10).join(disagreement_lines(review)))}</pre>")


def _review_data(report: Report) -> str:
    """The blind review's prompts as JSON inside a script element, with <, > and & as JSON escapes:
    no answer can end the element or open another."""
    prompts = []
    for r in report.rows:
        sides = order(report.settings.report_id, r.id)
        prompts.append({"id": r.id, "prompt": r.prompt, "reference": r.reference, "department": r.department,
                        "answers": [r.answers[side].text for side in sides], "labels": list(sides)})
    data = {"format": FORMAT, "report": report.settings.report_id, "prompts": prompts}
    text = json.dumps(data, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


REVIEW_VIEW = """<section id="review-view" hidden>
<p id="rv-empty" hidden>This report has no prompts to review.</p>
<p id="rv-volatile" class="verdict bad" hidden>This browser does not let the page keep your ratings (its storage is
blocked): download them before you close or reload it.</p>
<form id="rv-name-form" hidden><label>Your name, saved with your ratings: <input type="text" id="rv-name"
 maxlength="60" autocomplete="name"></label> <button type="submit">start</button></form>
<div id="rv-main" hidden>
<div class="bar"><span>reviewer <b id="rv-who"></b> <button type="button" id="rv-rename">change</button></span>
<span><progress id="rv-bar" max="{n}" value="0"></progress> <span id="rv-count">0</span> of {n} rated</span>
<span>prompt <b id="rv-pos">1</b> of {n}<span id="rv-dept"></span></span></div>
<div class="prompt" id="rv-prompt"></div>
<div id="rv-reference" hidden><h3>Reference answer</h3><div class="prompt" id="rv-ref-text"></div></div>
<div class="pair"><div class="answer" id="rv-box1"><h3>Answer 1 <span class="label" id="rv-l1"></span></h3>
<div class="text" id="rv-a1"></div></div><div class="answer" id="rv-box2"><h3>Answer 2 <span class="label"
 id="rv-l2"></span></h3><div class="text" id="rv-a2"></div></div></div>
<div class="choices"><button type="button" data-choice="1" aria-pressed="false">Answer 1 is better <kbd>1</kbd></button>
<button type="button" data-choice="0" aria-pressed="false">Tie <kbd>0</kbd></button>
<button type="button" data-choice="2" aria-pressed="false">Answer 2 is better <kbd>2</kbd></button></div>
<textarea id="rv-note" maxlength="500" placeholder="a short note (optional)"></textarea>
<div class="bar"><button type="button" id="rv-prev">← previous</button><button type="button" id="rv-next">next →</button>
<button type="button" id="rv-unrated">next unrated</button>
<label><input type="checkbox" id="rv-show-ref"> show the reference answer</label>
<label><input type="checkbox" id="rv-reveal"> reveal which answer is which</label>
<button type="button" id="rv-download">download ratings</button></div>
<p class="meta">The order of the two answers is drawn per prompt. Keys: <kbd>1</kbd> <kbd>0</kbd> <kbd>2</kbd> rate and
move on, <kbd>←</kbd> <kbd>→</kbd> move. Ratings stay in this browser until you download them; then:
<code>glmtune compare --adapter ADAPTER --ratings FILE</code></p></div>
</section>"""


def render(report: Report, chart_png: bytes | None) -> str:
    settings, aggregate, rows = report.settings, report.aggregate, report.rows
    verdict = aggregate.verdict
    tone = "good" if verdict.headline.startswith("HELPED") else \
        "bad" if verdict.headline.startswith(("HURT", "NOT HELPED")) else "none"
    sentences = "".join(f"<li>{escape(s)}</li>" for s in verdict.sentences)
    departments = department_rows(aggregate)
    chart = "" if chart_png is None else \
        f'<h2>Chart</h2><div class="wide chart"><img alt="metrics chart" title="click for full size / to fit" ' \
        f'src="data:image/png;base64,{base64.b64encode(chart_png).decode()}"></div>'
    # Widths for the wide table; the prompt and the reference share what the others leave. Short fixed
    # columns in em, so that "+0.031" never spills into its neighbour as a percentage of a narrow page would.
    columns = [("index", "#", "3em", "asc"), ("department", "department", "7em", "asc"), (None, "prompt", "", ""),
               (None, "reference", "", ""), ("flagsbase", "base", "24%", "desc"),
               ("flagstuned", "fine-tuned", "24%", "desc"),
               ("rouge", "Δ ROUGE-L", "5.5em", "desc"), ("chars", "Δ length", "5.5em", "desc")]
    cols = "".join(f'<col style="width:{w}">' if w else "<col>" for _, _, w, _ in columns)
    head = "".join("<th" + (f' data-key="{k}" data-first="{first}"' if k else "") + f">{escape(t)}</th>"
                   for k, t, _, first in columns)
    # On a narrow screen each prompt is a card, and each cell says which column it came from.
    card_labels = "".join(f'table.answers tbody td:nth-child({i})::before{{content:"{t}"}}'
                          for i, (_, t, _, _) in enumerate(columns, 1) if t != "department")
    settings_json = escape(json.dumps(asdict(settings), ensure_ascii=False, indent=1))
    return f"""<!DOCTYPE html>
<html lang="zh-CN"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>ChatGLM3 fine-tune comparison: {escape(settings.adapter)}</title><style>{STYLE}@media (max-width:{NARROW - 1}px){{{card_labels}}}</style></head>
<body>
<h1>Did the fine-tune help?</h1>
<div class="meta">adapter {escape(settings.adapter)} · base {escape(settings.base_model)} ·
{aggregate.prompts} prompts from {escape(settings.prompt_source)} · {escape(settings.decoding)}
decoding, at most {settings.max_new_tokens} new tokens · {escape(settings.device)}</div>
<nav class="modes"><a href="#report">Report</a><a href="#review">Blind review</a></nav>
{REVIEW_VIEW.format(n=len(rows))}
<main id="report-view">
<div class="verdict {tone}"><b>{escape(verdict.headline)}</b><ul>{sentences}</ul></div>
<h2>Metrics</h2>{_table(METRIC_COLUMNS, metric_rows(aggregate))}
<p>{escape(flag_line(aggregate))}<br>{escape(distinct_line(aggregate))}</p>
<div class="meta">{escape(SCORING_NOTE)}. "better" says which direction is an improvement; "-" where neither is;
"rel." is the difference relative to the base mean.</div>
{"<h2>By department (ROUGE-L)</h2>" + _table(DEPARTMENT_COLUMNS, departments) if departments else ""}
{_knowledge(aggregate.knowledge, settings.benchmark != NO_BENCHMARK_SETTING)}
{_review_results(aggregate.review)}
{chart}
<h2>Every prompt</h2>
<div class="controls"><input type="search" id="search" placeholder="filter by any text">
<label><input type="checkbox" id="flagged"> only flagged answers</label>
· showing <span id="shown">{len(rows)}</span> of {len(rows)} · click a column title to sort</div>
<table class="answers"><colgroup>{cols}</colgroup><thead><tr>{head}</tr></thead><tbody>
{chr(10).join(_row(r) for r in rows)}
</tbody></table>
<h2>Timing</h2><pre>{escape(chr(10).join(timing_lines(report.timing)))}</pre>
<h2>Settings</h2><pre>{settings_json}</pre>
</main>
<script type="application/json" id="review-data">{_review_data(report)}</script>
<script>{SCRIPT}{REVIEW_SCRIPT}</script>
</body></html>
"""


def write_html(path: Path, report: Report, chart: Path | None) -> None:
    png = chart.read_bytes() if chart is not None and chart.is_file() else None
    write_atomic(path, render(report, png))
