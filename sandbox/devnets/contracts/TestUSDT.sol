// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

/// @title Test Tether USD (tUSDT): a minimal ERC-20 stablecoin for local devnets only.
/// @notice Six decimals like USDT. Only the account that deployed the contract can mint; there is no
/// burn, pause, blacklist or upgrade. Solidity 0.8 checks every addition and subtraction for overflow.
contract TestUSDT {
    string public constant name = "Test Tether USD";
    string public constant symbol = "tUSDT";
    uint8 public constant decimals = 6;

    // A storage variable rather than an immutable, so the code deployed at the token address is exactly
    // the committed deployedBytecode (immutables would be patched into the runtime code at deployment).
    address public owner;
    uint256 public totalSupply;

    mapping(address => uint256) public balanceOf;
    mapping(address => mapping(address => uint256)) public allowance;

    event Transfer(address indexed from, address indexed to, uint256 value);
    event Approval(address indexed owner, address indexed spender, uint256 value);

    constructor() {
        owner = msg.sender;
    }

    /// @notice Create `amount` base units for `to`; only the deployer may call it.
    function mint(address to, uint256 amount) external returns (bool) {
        require(msg.sender == owner, "TestUSDT: caller is not the owner");
        require(to != address(0), "TestUSDT: mint to the zero address");
        totalSupply += amount;
        balanceOf[to] += amount;
        emit Transfer(address(0), to, amount);
        return true;
    }

    function transfer(address to, uint256 amount) external returns (bool) {
        _transfer(msg.sender, to, amount);
        return true;
    }

    function approve(address spender, uint256 amount) external returns (bool) {
        require(spender != address(0), "TestUSDT: approve to the zero address");
        allowance[msg.sender][spender] = amount;
        emit Approval(msg.sender, spender, amount);
        return true;
    }

    /// @notice Move `amount` from `from` to `to` using the caller's allowance; an allowance of
    /// type(uint256).max is unlimited and is not decreased.
    function transferFrom(address from, address to, uint256 amount) external returns (bool) {
        uint256 allowed = allowance[from][msg.sender];
        if (allowed != type(uint256).max) {
            require(allowed >= amount, "TestUSDT: insufficient allowance");
            unchecked {
                allowance[from][msg.sender] = allowed - amount;
            }
        }
        _transfer(from, to, amount);
        return true;
    }

    function _transfer(address from, address to, uint256 amount) private {
        require(to != address(0), "TestUSDT: transfer to the zero address");
        uint256 held = balanceOf[from];
        require(held >= amount, "TestUSDT: transfer amount exceeds balance");
        unchecked {
            // cannot underflow (checked above) and cannot overflow: the sum of balances is totalSupply
            balanceOf[from] = held - amount;
            balanceOf[to] += amount;
        }
        emit Transfer(from, to, amount);
    }
}
