//! Genesys Cloud regions: a region key (`eu_west_1`) or a domain
//! (`mypurecloud.ie`) → the API and login base URLs. The socket host is never
//! derived here: it is whatever `connectUri` says.

/// Region keys and their domains, as Genesys' SDKs list them.
pub const REGIONS: &[(&str, &str)] = &[
    ("us_east_1", "mypurecloud.com"),
    ("us_east_2", "use2.us-gov-pure.cloud"),
    ("us_west_2", "usw2.pure.cloud"),
    ("ca_central_1", "cac1.pure.cloud"),
    ("sa_east_1", "sae1.pure.cloud"),
    ("mx_central_1", "mxc1.pure.cloud"),
    ("eu_west_1", "mypurecloud.ie"),
    ("eu_west_2", "euw2.pure.cloud"),
    ("eu_central_1", "mypurecloud.de"),
    ("eu_central_2", "euc2.pure.cloud"),
    ("eusc_de_east_1", "edee1.eusc-pure.cloud"),
    ("me_central_1", "mec1.pure.cloud"),
    ("ap_south_1", "aps1.pure.cloud"),
    ("ap_southeast_1", "apse1.pure.cloud"),
    ("ap_southeast_2", "mypurecloud.com.au"),
    ("ap_northeast_1", "mypurecloud.jp"),
    ("ap_northeast_2", "apne2.pure.cloud"),
    ("ap_northeast_3", "apne3.pure.cloud"),
];

/// The domain for a region key or a known domain; `None` if it is neither.
pub fn domain(region: &str) -> Option<&'static str> {
    let wanted = region.trim().trim_end_matches('.').to_ascii_lowercase();
    REGIONS
        .iter()
        .find(|(key, domain)| *key == wanted.replace('-', "_") || *domain == wanted)
        .map(|(_, domain)| *domain)
}

/// `https://api.<domain>` and `https://login.<domain>`.
pub fn base_urls(domain: &str) -> (String, String) {
    (
        format!("https://api.{domain}"),
        format!("https://login.{domain}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_domains_resolve() {
        assert_eq!(domain("eu_west_1"), Some("mypurecloud.ie"));
        assert_eq!(domain("eu-west-1"), Some("mypurecloud.ie"));
        assert_eq!(domain("mypurecloud.ie"), Some("mypurecloud.ie"));
        assert_eq!(domain("MyPureCloud.de"), Some("mypurecloud.de"));
        assert_eq!(domain("mars_north_1"), None);
        assert_eq!(
            base_urls("mypurecloud.ie"),
            (
                "https://api.mypurecloud.ie".to_owned(),
                "https://login.mypurecloud.ie".to_owned()
            )
        );
    }
}
