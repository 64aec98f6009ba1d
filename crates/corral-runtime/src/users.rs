//! Users of an image: parsing `/etc/passwd` and `/etc/group` text without NSS.

/// A user account from an image's passwd file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
}

/// Parses passwd(5) text, skipping malformed lines.
pub fn parse_passwd(text: &str) -> Vec<Account> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 7 {
                return None;
            }
            Some(Account {
                name: f[0].to_owned(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].to_owned(),
                shell: f[6].to_owned(),
            })
        })
        .collect()
}

/// Finds a user by name, or by numeric uid when `name` is a number.
pub fn find<'a>(accounts: &'a [Account], name: &str) -> Option<&'a Account> {
    accounts.iter().find(|a| a.name == name).or_else(|| {
        name.parse::<u32>()
            .ok()
            .and_then(|uid| accounts.iter().find(|a| a.uid == uid))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n# c\nbroken\ndaytona:x:1000:1000:Daytona:/home/daytona:/bin/bash\n";

    #[test]
    fn parses_and_finds_by_name_or_uid() {
        let a = parse_passwd(PASSWD);
        assert_eq!(a.len(), 2);
        assert_eq!(find(&a, "daytona").map(|x| x.uid), Some(1000));
        assert_eq!(find(&a, "0").map(|x| x.name.as_str()), Some("root"));
        assert!(find(&a, "nobody").is_none());
    }
}
