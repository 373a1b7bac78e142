//! ISO 4217 alphabetic currency codes and ISO 3166-1 alpha-2 country codes that routes.toml
//! and payment requests are checked against.
//!
//! Data only, no I/O. Both tables are kept strictly sorted so lookups can binary search them;
//! the tests below enforce that.
//!
//! The currency table holds the codes currently active in ISO 4217 that have a defined minor
//! unit, fund codes such as CLF or UYW included. Left out on purpose: withdrawn codes (DEM, FRF,
//! HRK, BGN, ANG, SLL, ZWL, ...), precious metals (XAU, XAG, XPT, XPD), the testing and
//! "no currency" codes (XTS, XXX), and supranational units without a minor unit (XDR, XSU, XUA,
//! XBA to XBD). Codes are matched exactly: lowercase input is not a currency or a country.

/// Active ISO 4217 alphabetic codes with their minor unit exponent (the number of decimal
/// places between the major unit and the smallest unit amounts are expressed in), sorted by
/// code.
const CURRENCIES: [(&str, u8); 165] = [
    ("AED", 2),
    ("AFN", 2),
    ("ALL", 2),
    ("AMD", 2),
    ("AOA", 2),
    ("ARS", 2),
    ("AUD", 2),
    ("AWG", 2),
    ("AZN", 2),
    ("BAM", 2),
    ("BBD", 2),
    ("BDT", 2),
    ("BHD", 3),
    ("BIF", 0),
    ("BMD", 2),
    ("BND", 2),
    ("BOB", 2),
    ("BOV", 2),
    ("BRL", 2),
    ("BSD", 2),
    ("BTN", 2),
    ("BWP", 2),
    ("BYN", 2),
    ("BZD", 2),
    ("CAD", 2),
    ("CDF", 2),
    ("CHE", 2),
    ("CHF", 2),
    ("CHW", 2),
    ("CLF", 4),
    ("CLP", 0),
    ("CNY", 2),
    ("COP", 2),
    ("COU", 2),
    ("CRC", 2),
    ("CUC", 2),
    ("CUP", 2),
    ("CVE", 2),
    ("CZK", 2),
    ("DJF", 0),
    ("DKK", 2),
    ("DOP", 2),
    ("DZD", 2),
    ("EGP", 2),
    ("ERN", 2),
    ("ETB", 2),
    ("EUR", 2),
    ("FJD", 2),
    ("FKP", 2),
    ("GBP", 2),
    ("GEL", 2),
    ("GHS", 2),
    ("GIP", 2),
    ("GMD", 2),
    ("GNF", 0),
    ("GTQ", 2),
    ("GYD", 2),
    ("HKD", 2),
    ("HNL", 2),
    ("HTG", 2),
    ("HUF", 2),
    ("IDR", 2),
    ("ILS", 2),
    ("INR", 2),
    ("IQD", 3),
    ("IRR", 2),
    ("ISK", 0),
    ("JMD", 2),
    ("JOD", 3),
    ("JPY", 0),
    ("KES", 2),
    ("KGS", 2),
    ("KHR", 2),
    ("KMF", 0),
    ("KPW", 2),
    ("KRW", 0),
    ("KWD", 3),
    ("KYD", 2),
    ("KZT", 2),
    ("LAK", 2),
    ("LBP", 2),
    ("LKR", 2),
    ("LRD", 2),
    ("LSL", 2),
    ("LYD", 3),
    ("MAD", 2),
    ("MDL", 2),
    ("MGA", 2),
    ("MKD", 2),
    ("MMK", 2),
    ("MNT", 2),
    ("MOP", 2),
    ("MRU", 2),
    ("MUR", 2),
    ("MVR", 2),
    ("MWK", 2),
    ("MXN", 2),
    ("MXV", 2),
    ("MYR", 2),
    ("MZN", 2),
    ("NAD", 2),
    ("NGN", 2),
    ("NIO", 2),
    ("NOK", 2),
    ("NPR", 2),
    ("NZD", 2),
    ("OMR", 3),
    ("PAB", 2),
    ("PEN", 2),
    ("PGK", 2),
    ("PHP", 2),
    ("PKR", 2),
    ("PLN", 2),
    ("PYG", 0),
    ("QAR", 2),
    ("RON", 2),
    ("RSD", 2),
    ("RUB", 2),
    ("RWF", 0),
    ("SAR", 2),
    ("SBD", 2),
    ("SCR", 2),
    ("SDG", 2),
    ("SEK", 2),
    ("SGD", 2),
    ("SHP", 2),
    ("SLE", 2),
    ("SOS", 2),
    ("SRD", 2),
    ("SSP", 2),
    ("STN", 2),
    ("SVC", 2),
    ("SYP", 2),
    ("SZL", 2),
    ("THB", 2),
    ("TJS", 2),
    ("TMT", 2),
    ("TND", 3),
    ("TOP", 2),
    ("TRY", 2),
    ("TTD", 2),
    ("TWD", 2),
    ("TZS", 2),
    ("UAH", 2),
    ("UGX", 0),
    ("USD", 2),
    ("USN", 2),
    ("UYI", 0),
    ("UYU", 2),
    ("UYW", 4),
    ("UZS", 2),
    ("VED", 2),
    ("VES", 2),
    ("VND", 0),
    ("VUV", 0),
    ("WST", 2),
    ("XAF", 0),
    ("XCD", 2),
    ("XCG", 2),
    ("XOF", 0),
    ("XPF", 0),
    ("YER", 2),
    ("ZAR", 2),
    ("ZMW", 2),
    ("ZWG", 2),
];

/// The officially assigned ISO 3166-1 alpha-2 codes, sorted. Reserved and user-assigned codes
/// (EU, UK, XK, ...) are not in it.
const COUNTRIES: [&str; 249] = [
    "AD", "AE", "AF", "AG", "AI", "AL", "AM", "AO", "AQ", "AR", "AS", "AT", "AU", "AW", "AX", "AZ",
    "BA", "BB", "BD", "BE", "BF", "BG", "BH", "BI", "BJ", "BL", "BM", "BN", "BO", "BQ", "BR", "BS",
    "BT", "BV", "BW", "BY", "BZ", "CA", "CC", "CD", "CF", "CG", "CH", "CI", "CK", "CL", "CM", "CN",
    "CO", "CR", "CU", "CV", "CW", "CX", "CY", "CZ", "DE", "DJ", "DK", "DM", "DO", "DZ", "EC", "EE",
    "EG", "EH", "ER", "ES", "ET", "FI", "FJ", "FK", "FM", "FO", "FR", "GA", "GB", "GD", "GE", "GF",
    "GG", "GH", "GI", "GL", "GM", "GN", "GP", "GQ", "GR", "GS", "GT", "GU", "GW", "GY", "HK", "HM",
    "HN", "HR", "HT", "HU", "ID", "IE", "IL", "IM", "IN", "IO", "IQ", "IR", "IS", "IT", "JE", "JM",
    "JO", "JP", "KE", "KG", "KH", "KI", "KM", "KN", "KP", "KR", "KW", "KY", "KZ", "LA", "LB", "LC",
    "LI", "LK", "LR", "LS", "LT", "LU", "LV", "LY", "MA", "MC", "MD", "ME", "MF", "MG", "MH", "MK",
    "ML", "MM", "MN", "MO", "MP", "MQ", "MR", "MS", "MT", "MU", "MV", "MW", "MX", "MY", "MZ", "NA",
    "NC", "NE", "NF", "NG", "NI", "NL", "NO", "NP", "NR", "NU", "NZ", "OM", "PA", "PE", "PF", "PG",
    "PH", "PK", "PL", "PM", "PN", "PR", "PS", "PT", "PW", "PY", "QA", "RE", "RO", "RS", "RU", "RW",
    "SA", "SB", "SC", "SD", "SE", "SG", "SH", "SI", "SJ", "SK", "SL", "SM", "SN", "SO", "SR", "SS",
    "ST", "SV", "SX", "SY", "SZ", "TC", "TD", "TF", "TG", "TH", "TJ", "TK", "TL", "TM", "TN", "TO",
    "TR", "TT", "TV", "TW", "TZ", "UA", "UG", "UM", "US", "UY", "UZ", "VA", "VC", "VE", "VG", "VI",
    "VN", "VU", "WF", "WS", "YE", "YT", "ZA", "ZM", "ZW",
];

/// Whether `code` is an active ISO 4217 alphabetic currency code (exact, uppercase).
pub fn is_currency(code: &str) -> bool {
    minor_unit_exponent(code).is_some()
}

/// The ISO 4217 minor unit exponent of `code`: 2 for EUR (cents), 0 for JPY, 3 for KWD.
/// `None` when `code` is not in the table.
pub fn minor_unit_exponent(code: &str) -> Option<u8> {
    CURRENCIES
        .binary_search_by(|(c, _)| (*c).cmp(code))
        .ok()
        .map(|i| CURRENCIES[i].1)
}

/// Whether `code` is an officially assigned ISO 3166-1 alpha-2 country code (exact, uppercase).
pub fn is_country(code: &str) -> bool {
    COUNTRIES.binary_search(&code).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upper_ascii_of_len(s: &str, len: usize) -> bool {
        s.len() == len && s.bytes().all(|b| b.is_ascii_uppercase())
    }

    #[test]
    fn currencies_strictly_sorted_and_well_formed() {
        for pair in CURRENCIES.windows(2) {
            assert!(pair[0].0 < pair[1].0, "{} !< {}", pair[0].0, pair[1].0);
        }
        for (code, exp) in CURRENCIES {
            assert!(upper_ascii_of_len(code, 3), "bad currency code {code:?}");
            assert!(exp <= 4, "odd exponent {exp} for {code}");
        }
    }

    #[test]
    fn countries_strictly_sorted_and_well_formed() {
        for pair in COUNTRIES.windows(2) {
            assert!(pair[0] < pair[1], "{} !< {}", pair[0], pair[1]);
        }
        for code in COUNTRIES {
            assert!(upper_ascii_of_len(code, 2), "bad country code {code:?}");
        }
        assert_eq!(COUNTRIES.len(), 249);
    }

    #[test]
    fn every_entry_is_found() {
        for (code, exp) in CURRENCIES {
            assert!(is_currency(code), "{code}");
            assert_eq!(minor_unit_exponent(code), Some(exp), "{code}");
        }
        for code in COUNTRIES {
            assert!(is_country(code), "{code}");
        }
    }

    #[test]
    fn currency_spot_checks() {
        for code in [
            "EUR", "USD", "GBP", "JPY", "CHF", "SEK", "BRL", "INR", "CNY", "KWD", "BHD", "CLF",
            "XOF", "XAF", "XPF", "XCD",
        ] {
            assert!(is_currency(code), "{code} should be a currency");
        }
        for code in [
            "DEM", "FRF", "HRK", "eur", "Eur", "EU", "EURO", "", " EUR", "XAU", "XAG", "XPT",
            "XPD", "XTS", "XXX", "XDR",
        ] {
            assert!(!is_currency(code), "{code:?} should not be a currency");
        }
    }

    #[test]
    fn exponent_spot_checks() {
        assert_eq!(minor_unit_exponent("JPY"), Some(0));
        assert_eq!(minor_unit_exponent("EUR"), Some(2));
        assert_eq!(minor_unit_exponent("USD"), Some(2));
        assert_eq!(minor_unit_exponent("KWD"), Some(3));
        assert_eq!(minor_unit_exponent("CLF"), Some(4));
        assert_eq!(minor_unit_exponent("XOF"), Some(0));
        assert_eq!(minor_unit_exponent("DEM"), None);
        assert_eq!(minor_unit_exponent("jpy"), None);
    }

    #[test]
    fn country_spot_checks() {
        for code in ["DE", "US", "GB", "FR", "JP", "AX", "ZW"] {
            assert!(is_country(code), "{code} should be a country");
        }
        for code in ["XK", "UK", "EU", "de", "De", "", "D", "DEU", "ZZ"] {
            assert!(!is_country(code), "{code:?} should not be a country");
        }
    }
}
