//! The fleet dashboard in a real browser (headless Chromium over
//! WebDriver) against the real controller and 30 simulated sites: the
//! table pages and filters on the server, a site whose link is cut turns
//! offline on the open page without a reload, its page shows the alarm and
//! the link's history, and a read-only token sees no action buttons.
//! Screenshots go to `target/screenshots/`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use roost_tests::browser::Browser;
use roost_tests::link::{LinkParams, Relay};
use roost_tests::sim::{self, SimSite};
use roost_tests::{repo_root, ControllerProcess};
use serde_json::Value;

const SITES: usize = 30;
const OFFLINE_AFTER: u64 = 8;

fn screenshots() -> PathBuf {
    repo_root().join("target/screenshots")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_fleet_live_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("controller");
    std::fs::create_dir_all(&data).unwrap();
    let mut config = format!(
        "region: {{name: eu-central}}\napi: {{listen: 127.0.0.1:7443}}\nquic: {{listen: 127.0.0.1:7444}}\noffline_after_secs: {OFFLINE_AFTER}\nsites:\n"
    );
    for i in 1..=SITES {
        let kind = if i % 3 == 0 { "vehicle" } else { "factory" };
        config.push_str(&format!(
            "  - {{id: site-{i:03}, labels: {{kind: {kind}}}}}\n"
        ));
    }
    let config_path = dir.path().join("region.yaml");
    std::fs::write(&config_path, config).unwrap();
    let sites: Vec<Arc<SimSite>> = sim::enroll(&data, &config_path, |_| {});
    let controller = ControllerProcess::start(&config_path, &data);
    let quic: std::net::SocketAddr = controller.quic.parse().unwrap();
    // site-003 reaches the region through a link we can cut.
    let relay = Relay::start(quic, LinkParams::default(), 7).await.unwrap();
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    for s in &sites {
        let addr = if s.id == "site-003" { relay.addr } else { quic };
        tokio::spawn(s.clone().run(endpoint.clone(), addr, None));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = controller
            .call(reqwest::Method::GET, "/overview", None)
            .await;
        if body["overview"]["online"] == SITES {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sites did not come online: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let browser = Browser::start().await;
    // The page loads with no assets from anywhere but the controller.
    let html = reqwest::get(format!("{}/", controller.api))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "the page fetches nothing from elsewhere"
    );
    browser
        .goto(&format!(
            "{}/#token={}",
            controller.api,
            controller.admin_token()
        ))
        .await;
    let rows = "document.querySelectorAll('#rows tr[data-site]').length";
    browser
        .wait_for(
            "the table shows every site, all online",
            &format!("return ({rows}) === {SITES} && document.querySelectorAll('#rows .availability .offline').length === 0 && document.getElementById('live').textContent === 'live'"),
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(
        browser.eval("return location.hash").await,
        "",
        "the token leaves the address bar"
    );
    assert_eq!(
        browser
            .eval("return document.querySelector('#cards .card .n').textContent")
            .await,
        SITES.to_string()
    );

    // Paging on the server: 25 per page, 2 pages.
    browser
        .eval("const s = document.getElementById('perpage'); s.value = '25'; s.dispatchEvent(new Event('change')); return true")
        .await;
    browser
        .wait_for(
            "25 rows on page 1 of 2",
            &format!("return ({rows}) === 25 && document.getElementById('pageinfo').textContent.startsWith('page 1 of 2')"),
            Duration::from_secs(10),
        )
        .await;
    browser
        .eval("document.getElementById('next').click(); return true")
        .await;
    browser
        .wait_for(
            "5 rows on page 2",
            &format!("return ({rows}) === 5 && document.querySelector('#rows tr').dataset.site === 'site-026'"),
            Duration::from_secs(10),
        )
        .await;
    // Filters: by name, then by label.
    browser
        .eval("const q = document.getElementById('q'); q.value = 'site-01'; q.dispatchEvent(new Event('input')); return true")
        .await;
    browser
        .wait_for(
            "the name filter leaves site-010..site-019",
            &format!("return ({rows}) === 10 && [...document.querySelectorAll('#rows tr[data-site]')].every(r => r.dataset.site.startsWith('site-01'))"),
            Duration::from_secs(10),
        )
        .await;
    browser
        .eval("const q = document.getElementById('q'); q.value = ''; const l = document.getElementById('label'); l.value = 'kind=vehicle'; l.dispatchEvent(new Event('input')); return true")
        .await;
    browser
        .wait_for(
            "the label filter leaves the 10 vehicles",
            &format!("return ({rows}) === 10 && document.getElementById('pageinfo').textContent.includes('10 sites')"),
            Duration::from_secs(10),
        )
        .await;
    browser
        .eval("const l = document.getElementById('label'); l.value = ''; l.dispatchEvent(new Event('input')); return true")
        .await;
    browser
        .wait_for(
            "back to page 1 of all",
            &format!("return ({rows}) === 25"),
            Duration::from_secs(10),
        )
        .await;
    browser
        .screenshot(&screenshots().join("dashboard-fleet.png"))
        .await;
    // On a tablet the table still fits the width (narrow columns hide).
    browser.resize(820, 1180).await;
    browser
        .wait_for(
            "the page fits a tablet's width",
            "return document.documentElement.scrollWidth <= window.innerWidth",
            Duration::from_secs(5),
        )
        .await;
    browser
        .screenshot(&screenshots().join("dashboard-tablet.png"))
        .await;
    browser.resize(1280, 900).await;

    // A site publishes its conflict journal; its page shows the entries.
    let site5 = sites.iter().find(|s| s.id == "site-005").unwrap();
    site5.record(|d| {
        d.status
            .set(
                "site",
                "conflicts",
                &serde_json::json!({"total": 1, "recent": [{"seq": 1, "kind": "servers",
                    "resource_id": "cam-9", "field": "name", "recorded_at": "2026-11-22T10:00:00Z",
                    "winner": {"v": "cam-north", "at": 2, "by": "region:eu-central"},
                    "loser": {"v": "cam-south", "at": 1, "by": "site:site-005"}}]}),
            )
            .unwrap()
    });
    browser
        .eval("location.hash = '#/site/site-005'; return true")
        .await;
    browser
        .wait_for(
            "site-005's page shows its conflict journal",
            "const t = document.getElementById('site').textContent; return t.includes('Conflict journal (1 at the site') && t.includes('cam-south') && t.includes('servers/cam-9')",
            Duration::from_secs(15),
        )
        .await;
    browser.eval("location.hash = '#/'; return true").await;
    browser
        .wait_for(
            "back on the table",
            &format!("return ({rows}) === 25"),
            Duration::from_secs(10),
        )
        .await;

    // Cut site-003's link: the open page shows it offline without a reload.
    browser.eval("window.__stayed = true; return true").await;
    relay.cut(true);
    let took = browser
        .wait_for(
            "site-003 turns offline on the page",
            "const r = document.querySelector('#rows tr[data-site=\"site-003\"] .availability'); return !!r && r.textContent.startsWith('offline')",
            Duration::from_secs(30),
        )
        .await;
    println!("the cut site showed offline on the open page {took:?} after the cut");
    assert_eq!(
        browser.eval("return window.__stayed === true").await,
        true,
        "no reload"
    );
    browser
        .wait_for(
            "the overview counts it",
            "return [...document.querySelectorAll('#cards .card')].some(c => c.querySelector('.l').textContent === 'offline' && c.querySelector('.n').textContent === '1')",
            Duration::from_secs(10),
        )
        .await;

    // Its page: the critical alarm, the link history, an admin's actions.
    browser
        .eval("location.hash = '#/site/site-003'; return true")
        .await;
    browser
        .wait_for(
            "the site page shows the offline alarm and history",
            "const t = document.getElementById('site').textContent; return t.includes('site.offline') && t.includes('Link, last 3 days') && !!document.getElementById('mgmt') && document.querySelectorAll('button.ack').length === 1",
            Duration::from_secs(10),
        )
        .await;
    browser
        .screenshot(&screenshots().join("dashboard-site.png"))
        .await;
    let svg_rects: Value = browser
        .eval("return document.querySelectorAll('#site svg rect').length")
        .await;
    assert!(
        svg_rects.as_u64().unwrap() >= 3,
        "online then offline drawn: {svg_rects}"
    );

    // A read-only token: the same page, no action buttons, and the API
    // refuses its changes.
    browser
        .goto(&format!(
            "{}/?viewer#token={}",
            controller.api,
            std::fs::read_to_string(data.join("viewer.token"))
                .unwrap()
                .trim()
        ))
        .await;
    browser
        .wait_for(
            "the viewer sees the table",
            &format!(
                "return ({rows}) > 0 && document.getElementById('who').textContent === 'read-only'"
            ),
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(
        browser
            .eval("return getComputedStyle(document.getElementById('newtoken')).display")
            .await,
        "none"
    );
    browser
        .eval("location.hash = '#/site/site-003'; return true")
        .await;
    browser
        .wait_for(
            "the viewer's site page has no buttons",
            "const t = document.getElementById('site').textContent; return t.includes('site.offline') && !document.getElementById('mgmt') && document.querySelectorAll('button.ack').length === 0",
            Duration::from_secs(10),
        )
        .await;
    let viewer = std::fs::read_to_string(data.join("viewer.token")).unwrap();
    let refused = reqwest::Client::new()
        .post(format!(
            "{}/roost/v1/sites/site-003/unmanage",
            controller.api
        ))
        .bearer_auth(viewer.trim())
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 403);
    let (_, site) = controller
        .call(reqwest::Method::GET, "/sites/site-003", None)
        .await;
    assert_eq!(
        site["site"]["management"], "managed",
        "the refusal changed nothing"
    );

    for s in &sites {
        s.let_go();
    }
}
