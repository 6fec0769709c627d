//! The checks on the final response, in blackbox_exporter's order: status code, headers,
//! body, protocol version, then TLS required or forbidden. The first that fails names the
//! probe's `failed_reason`.

use probermesh_core::model::{HttpFailure, HttpModule};

use super::FinalResponse;

pub(crate) fn check(module: &HttpModule, response: &FinalResponse) -> Result<(), HttpFailure> {
    let status_ok = if module.valid_status_codes.is_empty() {
        (200..300).contains(&response.status)
    } else {
        module.valid_status_codes.contains(&response.status)
    };
    if !status_ok {
        return Err(HttpFailure::InvalidStatus(response.status));
    }
    for rule in &module.fail_if_header_matches {
        let values: Vec<&str> = response
            .headers
            .get_all(rule.header.as_str())
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if values.iter().any(|v| rule.regexp.is_match(v)) {
            return Err(HttpFailure::HeaderRegexp);
        }
    }
    for rule in &module.fail_if_header_not_matches {
        let values: Vec<&str> = response
            .headers
            .get_all(rule.header.as_str())
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if values.is_empty() {
            if !rule.allow_missing {
                return Err(HttpFailure::HeaderRegexp);
            }
        } else if !values.iter().any(|v| rule.regexp.is_match(v)) {
            return Err(HttpFailure::HeaderRegexp);
        }
    }
    if !module.fail_if_body_matches_regexp.is_empty()
        || !module.fail_if_body_not_matches_regexp.is_empty()
    {
        let body = String::from_utf8_lossy(response.body.as_deref().unwrap_or_default());
        if module
            .fail_if_body_matches_regexp
            .iter()
            .any(|re| re.is_match(&body))
        {
            return Err(HttpFailure::BodyRegexp);
        }
        if !module
            .fail_if_body_not_matches_regexp
            .iter()
            .all(|re| re.is_match(&body))
        {
            return Err(HttpFailure::BodyRegexp);
        }
    }
    if !module.valid_http_versions.is_empty()
        && !response
            .version
            .is_some_and(|v| module.valid_http_versions.contains(&v))
    {
        return Err(HttpFailure::HttpVersion);
    }
    if module.fail_if_ssl && response.over_tls {
        return Err(HttpFailure::SslForbidden);
    }
    if module.fail_if_not_ssl && !response.over_tls {
        return Err(HttpFailure::SslRequired);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::{HeaderMap, HeaderValue};
    use probermesh_core::model::http_module::{HeaderMatch, HttpVersion};
    use regex::Regex;

    fn response(status: u16) -> FinalResponse {
        let mut headers = HeaderMap::new();
        headers.insert("x-env", HeaderValue::from_static("production"));
        FinalResponse {
            status,
            version: Some(HttpVersion::Http11),
            over_tls: false,
            headers,
            body: Some(b"all systems nominal".to_vec()),
        }
    }

    fn header_rule(header: &str, re: &str, allow_missing: bool) -> HeaderMatch {
        HeaderMatch {
            header: header.into(),
            regexp: Regex::new(re).unwrap(),
            allow_missing,
        }
    }

    #[test]
    fn status_codes_default_and_explicit() {
        let module = HttpModule::default();
        assert_eq!(check(&module, &response(200)), Ok(()));
        assert_eq!(
            check(&module, &response(404)),
            Err(HttpFailure::InvalidStatus(404))
        );
        let any_2xx = HttpModule {
            valid_status_codes: vec![],
            ..HttpModule::default()
        };
        assert_eq!(check(&any_2xx, &response(204)), Ok(()));
        assert_eq!(
            check(&any_2xx, &response(301)),
            Err(HttpFailure::InvalidStatus(301))
        );
    }

    #[test]
    fn header_rules() {
        let module = HttpModule {
            fail_if_header_matches: vec![header_rule("X-Env", "prod", false)],
            ..HttpModule::default()
        };
        assert_eq!(
            check(&module, &response(200)),
            Err(HttpFailure::HeaderRegexp)
        );
        let module = HttpModule {
            fail_if_header_not_matches: vec![header_rule("x-missing", ".", true)],
            ..HttpModule::default()
        };
        assert_eq!(check(&module, &response(200)), Ok(()));
        let module = HttpModule {
            fail_if_header_not_matches: vec![header_rule("x-missing", ".", false)],
            ..HttpModule::default()
        };
        assert_eq!(
            check(&module, &response(200)),
            Err(HttpFailure::HeaderRegexp)
        );
    }

    #[test]
    fn body_rules() {
        let module = HttpModule {
            fail_if_body_matches_regexp: vec![Regex::new("error").unwrap()],
            fail_if_body_not_matches_regexp: vec![Regex::new("nominal").unwrap()],
            ..HttpModule::default()
        };
        assert_eq!(check(&module, &response(200)), Ok(()));
        let module = HttpModule {
            fail_if_body_not_matches_regexp: vec![Regex::new("degraded").unwrap()],
            ..HttpModule::default()
        };
        assert_eq!(check(&module, &response(200)), Err(HttpFailure::BodyRegexp));
    }

    #[test]
    fn version_and_tls_rules() {
        let module = HttpModule {
            valid_http_versions: vec![HttpVersion::Http2],
            ..HttpModule::default()
        };
        assert_eq!(
            check(&module, &response(200)),
            Err(HttpFailure::HttpVersion)
        );
        let module = HttpModule {
            fail_if_not_ssl: true,
            ..HttpModule::default()
        };
        assert_eq!(
            check(&module, &response(200)),
            Err(HttpFailure::SslRequired)
        );
        let mut over_tls = response(200);
        over_tls.over_tls = true;
        let module = HttpModule {
            fail_if_ssl: true,
            ..HttpModule::default()
        };
        assert_eq!(check(&module, &over_tls), Err(HttpFailure::SslForbidden));
    }
}
