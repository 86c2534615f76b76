use regex_automata::meta::Regex;
use regex_automata::util::syntax;
use std::time::Instant;
fn strings(v: &serde_json::Value, out: &mut Vec<String>) {
    match v { serde_json::Value::String(s) => out.push(s.clone()), serde_json::Value::Array(a) => a.iter().for_each(|x| strings(x, out)), serde_json::Value::Object(m) => m.values().for_each(|x| strings(x, out)), _ => {} }
}
fn main() {
    let text = std::fs::read_to_string("/work/shared/pii-bench/dev/corpus.jsonl").unwrap();
    let mut ss = Vec::new();
    for l in text.lines() { strings(&serde_json::from_str(l).unwrap(), &mut ss); }
    let rules: serde_json::Value = serde_json::from_str(sluice_pii::RULES_JSON).unwrap();
    let mut pats = Vec::new();
    for d in rules["detectors"].as_array().unwrap() {
        let p = d["pattern"].as_str().unwrap().replace("\\b", "(?-u:\\b)");
        let p = if d["flags"].as_str() == Some("i") { format!("(?i:{p})") } else { p };
        let re = Regex::builder().syntax(syntax::Config::new().utf8(false)).build(&p).unwrap();
        let t = Instant::now(); let mut n = 0;
        for s in &ss { n += re.find_iter(s.as_bytes()).count(); }
        println!("{:20} {:8.1} ms  matches {}", d["id"].as_str().unwrap(), t.elapsed().as_secs_f64()*1e3, n);
        let ex = std::env::var("EXCL").unwrap_or_default();
        if !ex.split(',').any(|e| e == d["id"].as_str().unwrap()) { pats.push(p); }
    }
    let cap: usize = std::env::var("CAP").ok().and_then(|c| c.parse().ok()).unwrap_or(2 << 20);
    let all = Regex::builder().syntax(syntax::Config::new().utf8(false)).configure(Regex::config().hybrid_cache_capacity(cap)).build_many(&pats).unwrap();
    for _ in 0..3 {
    let t = Instant::now(); let mut n = 0;
    for s in &ss { n += all.is_match(s.as_bytes()) as usize; }
    println!("ISMATCH {:8.1} ms  matched strings {}", t.elapsed().as_secs_f64()*1e3, n);
    }
    let hy = regex_automata::hybrid::regex::Regex::builder().syntax(syntax::Config::new().utf8(false)).dfa(regex_automata::hybrid::dfa::Config::new().cache_capacity(cap)).build_many(&pats).unwrap();
    let mut cache = hy.create_cache();
    for _ in 0..3 {
    let t = Instant::now(); let mut n = 0;
    for s in &ss { n += hy.find_iter(&mut cache, s.as_bytes()).count(); }
    println!("HYBRID {:8.1} ms  matches {}", t.elapsed().as_secs_f64()*1e3, n);
    }
    let fwd = hy.forward();
    for _ in 0..3 {
    let t = Instant::now(); let mut n = 0;
    for s in &ss { n += fwd.try_search_fwd(cache.as_parts_mut().0, &regex_automata::Input::new(s.as_bytes())).unwrap().is_some() as usize; }
    println!("HYBRID-FWD {:8.1} ms  matches {}", t.elapsed().as_secs_f64()*1e3, n);
    }
    for _ in 0..3 {
    let t = Instant::now(); let mut n = 0;
    for s in &ss { n += all.find_iter(s.as_bytes()).count(); }
    println!("ALL {:8.1} ms  matches {} bytes {}", t.elapsed().as_secs_f64()*1e3, n, ss.iter().map(|s| s.len()).sum::<usize>());
    }
}
